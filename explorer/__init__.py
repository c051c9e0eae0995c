"""The pages of the Streamlit explorer (``app.py``): thin callers of synth, attacks and metamers."""
