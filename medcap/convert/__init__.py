"""Offline converters of foreign model files; later also exporters of what medcap trains.

One module per format, run once before training or after it, never inside a recipe:

* :mod:`medcap.convert.gguf`: a Llama-architecture GGUF file (llama.cpp) -> a Hugging Face layout
  checkpoint folder that torchtune's ``FullModelHFCheckpointer`` and tokenizers read
  (dequantisation, the q/k rotary permutation, the byte-level BPE rebuilt from the GGUF vocabulary).
* exporters (open_clip, timm) of a trained image encoder belong here too.

Nothing is imported here: each converter pulls in its own heavy dependencies (``gguf``, torch,
``tokenizers``) only when it is used. The command-line tools (``tools/import_gguf.py``) are thin
wrappers over these modules.
"""
