"""Gallery: a batch output folder through its manifest: filter by model, objective and seed, view, download."""
import json
from pathlib import Path

import streamlit as st

from explorer.common import as_uint8, shown_errors
from synth.files import read_png

st.header("Gallery")
folder = st.text_input("batch output folder (where manifest.jsonl is)", "runs/stretch_it",
                       help="`phosphene batch EXPERIMENT --out FOLDER` writes one")
manifest = Path(folder) / "manifest.jsonl"
if not manifest.is_file():
    st.info(f"No manifest.jsonl in {folder!r}. Run `phosphene batch examples/stretch_it.toml --out {folder}` "
            "first, or point at another folder.")
    st.stop()
try:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
except json.JSONDecodeError as e:
    st.error(f"{manifest} is not valid JSON lines ({e}); rerun the batch to rewrite it.")
    st.stop()
with st.sidebar:
    picks = {}
    for key in ("model", "objective", "seed"):
        values = sorted({str(r.get(key)) for r in rows})
        picks[key] = st.multiselect(key, values, default=values, key=f"gallery-{key}")
    per_row = st.slider("per row", 2, 8, 4)
shown = [r for r in rows if all(str(r.get(k)) in v for k, v in picks.items())]
st.caption(f"{len(shown)} of {len(rows)} stimuli")
for start in range(0, len(shown), per_row):
    for col, r in zip(st.columns(per_row), shown[start:start + per_row]):
        path = Path(folder) / str(r.get("file", ""))
        with col, shown_errors():
            image, meta = read_png(path)
            col.image(as_uint8(image), caption=f"{r.get('objective')} · seed {r.get('seed')}", width="stretch")
            col.download_button("PNG", path.read_bytes(), path.name, "image/png", key=f"gallery-{path.name}")
            with st.expander("metadata"):
                st.json(meta or r)
