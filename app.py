"""phosphene explorer (Streamlit): one page per capability.  Thin: the pages only call the library.

Run with ``make app`` (``streamlit run app.py``); the pages live in ``explorer/``.
"""
import streamlit as st

import synth

st.set_page_config(page_title="phosphene", layout="wide")
st.sidebar.caption(f"phosphene {synth.__version__} · device {synth.default_device()}")
pages = st.navigation([
    st.Page("explorer/models_page.py", title="Models", icon=":material/psychology:", default=True),
    st.Page("explorer/synthesize.py", title="Synthesize", icon=":material/palette:"),
    st.Page("explorer/attack.py", title="Attack", icon=":material/swords:"),
    st.Page("explorer/metamers_page.py", title="Metamers", icon=":material/compare:"),
    st.Page("explorer/microstim.py", title="Micro-stimulation", icon=":material/bolt:"),
    st.Page("explorer/loop_page.py", title="Loop", icon=":material/autorenew:"),
    st.Page("explorer/gallery.py", title="Gallery", icon=":material/photo_library:"),
])
pages.run()
