"""vit-demo: start the web app (``python app.py``; on Hugging Face Spaces, the app file).

Importing this module builds nothing; ``main()`` loads the models and launches the server.
Settings (environment): VIT_DEMO_DATA_DIR (CIFAR-10 arrays), VIT_DEMO_DOWNLOAD_DATA (1: fetch
CIFAR-10 in the background at start when there is no local copy; on by default on a Space, where
SPACE_ID is set, and in scripts/start.sh; on a Space Gradio also caches what the examples show),
VIT_DEMO_WEIGHTS_DIR (shipped checkpoints), VIT_DEMO_FINETUNE_DIR (fine-tuned ones),
VIT_DEMO_VITB16_HUB (ViT-B/16 hub name), the limits in ``vit_demo.settings``,
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.

The terminal gets one line per model load, per refused request and per failed job. When the
Hugging Face hub cannot be reached, the app works from the local cache (``HF_HUB_OFFLINE=1``, set
before huggingface_hub is imported, so that it does not retry each download) and says in one
sentence what is missing.
"""

import logging
import os


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("vit_demo").setLevel(logging.INFO)
    from vit_demo.hub import hub_reachable  # imports no huggingface_hub

    online = os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0") and hub_reachable()
    if not online:
        os.environ["HF_HUB_OFFLINE"] = "1"
    from vit_demo.ui import build_demo, create_context, launch_kwargs, offline_summary

    on_space = bool(os.environ.get("SPACE_ID"))
    download = os.environ.get("VIT_DEMO_DOWNLOAD_DATA", "1" if on_space else "0") == "1"
    ctx = create_context(download_data=download and online, cache_examples=on_space)
    if not online:
        logging.getLogger("vit_demo").warning(offline_summary(ctx))
    demo = build_demo(ctx)
    demo.launch(**launch_kwargs(demo, ctx))


if __name__ == "__main__":
    main()
