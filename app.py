"""vit-demo: start the web app (``python app.py``; on Hugging Face Spaces, the app file).

Importing this module builds nothing; ``main()`` loads the models and launches the server.
Settings (environment): VIT_DEMO_DATA_DIR (CIFAR-10 arrays), VIT_DEMO_DOWNLOAD_DATA (1: fetch
CIFAR-10 in the background at start when there is no local copy; on by default on a Space, where
SPACE_ID is set; there Gradio also caches what the examples show),
VIT_DEMO_WEIGHTS_DIR (shipped checkpoints), VIT_DEMO_FINETUNE_DIR (fine-tuned ones),
VIT_DEMO_VITB16_HUB (ViT-B/16 hub name), the limits in ``vit_demo.settings``,
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import os


def main() -> None:
    from vit_demo.ui import build_demo, create_context, launch_kwargs

    on_space = bool(os.environ.get("SPACE_ID"))
    download = os.environ.get("VIT_DEMO_DOWNLOAD_DATA", "1" if on_space else "0") == "1"
    ctx = create_context(download_data=download, cache_examples=on_space)
    demo = build_demo(ctx)
    demo.launch(**launch_kwargs(demo, ctx))


if __name__ == "__main__":
    main()
