"""Short fine-tuning jobs started from the browser, one small module per job:

- ``request``: what a visitor may ask for (``FinetuneRequest``, checked on construction) and
  the trainer config it becomes;
- ``policy``: where jobs run (CPU or CUDA), how long one may take, how long one would take;
- ``store``: the folder of fine-tuned checkpoints: unique names, a cap, eviction;
- ``job``: the job body (build the base and load data outside the GPU window, then train,
  save, test), a generator of events;
- ``zerogpu``: the optional ``spaces.GPU`` adapter for ZeroGPU Spaces;
- ``runner``: one job at a time per server, its state, who may stop it, the card at the end.
"""
