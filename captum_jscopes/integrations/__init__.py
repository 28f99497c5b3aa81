"""The scopes inside other tools: Captum's LLM wrapper (:mod:`.captum`) and
Inseq's method registry (:mod:`.inseq`, needs ``pip install "captum_jscopes[inseq]"``)."""
