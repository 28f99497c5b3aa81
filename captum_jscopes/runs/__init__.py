"""Running the scopes over prompts, shared by the library, the CLI and the
benchmarks: one prompt explained and written (:mod:`.explain`), a whole
dataset (:mod:`.dataset`), the sharded resumable runner (:mod:`.runner`) and
the shipped prompt sets (:mod:`.prompts`, ``data/``)."""
