"""vit-demo: start the web app (``python app.py``; on Hugging Face Spaces, the app file).

Importing this module builds nothing; ``main()`` loads the models and launches the server.
Settings (environment): VIT_DEMO_DATA_DIR (CIFAR-10 arrays), VIT_DEMO_DOWNLOAD_DATA=1 (fetch
CIFAR-10 for the example gallery when there is no local copy, e.g. on a Space),
VIT_DEMO_WEIGHTS_DIR (checkpoints), VIT_DEMO_VITB16_HUB (ViT-B/16 hub name),
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import os


def main() -> None:
    from vit_demo.ui import build_demo, create_context, launch_kwargs

    ctx = create_context(download_data=os.environ.get("VIT_DEMO_DOWNLOAD_DATA") == "1")
    build_demo(ctx).launch(**launch_kwargs(ctx))


if __name__ == "__main__":
    main()
