"""Publish the app as a Hugging Face Space: ``python -m vit_demo deploy OWNER/SPACE [--dry-run]``.

The Space gets exactly the files it runs from, as git tracks them (an untracked fine-tune in
``weights/``, ``.venv`` or caches never leave the machine), with their working-tree content:

- ``app.py``, ``requirements.txt``, ``README.md`` (its front matter is the Space's
  configuration) and ``.gitattributes``;
- the package, ``vit_demo/**/*.py``;
- the shipped checkpoints, ``weights/*.safetensors`` and their ``weights/*.json`` cards;
- the images the README shows (``docs/screenshot-*.png``), so that its page renders on the hub.

Not the tests, benchmarks, scripts or CI: the Space never runs them. The upload goes through
huggingface_hub's API (``HfApi.upload_folder``), which stores weights and images through Xet,
as the hub requires of binary files (a plain ``git push`` of them is refused). It is one commit
that also deletes whatever else the Space held, so the Space matches the list.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("app.py", "requirements.txt", "README.md", ".gitattributes")
_README_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)")


class DeployError(RuntimeError):
    """The Space cannot be published; the message says why."""


def space_files(root: Path = REPO_ROOT) -> list[str]:
    """Every file the Space needs, sorted; raises ``DeployError`` if an essential one is missing."""
    try:
        run = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DeployError(f"{root} is not a git checkout (or git is missing): deploy uploads the "
                          "files git tracks, so run it in a clone of the repository") from exc
    # the files git tracks that exist in the working tree (POSIX paths)
    tracked = [p for p in run.stdout.decode().split("\0") if p and (root / p).is_file()]
    readme = root / "README.md"
    markdown = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    # the images ``![...](path)`` the README shows from this repository
    shown = {m.removeprefix("./") for m in _README_IMAGE.findall(markdown) if "://" not in m}
    files = sorted(p for p in tracked if p in TOP_LEVEL or p in shown
                   or (p.startswith("vit_demo/") and p.endswith(".py"))
                   or (p.rpartition("/")[0] == "weights" and p.endswith((".safetensors", ".json"))))
    missing = [p for p in TOP_LEVEL if p not in files]
    if missing:
        raise DeployError(f"not tracked by git in {root}: {', '.join(missing)}")
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("space", metavar="OWNER/SPACE", help="the Space's repository id")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files and their sizes; upload nothing (no network)")


def cmd_deploy(args: argparse.Namespace, root: Path = REPO_ROOT) -> int:
    """The ``deploy`` command; 0 on success, 1 with a message on failure."""
    try:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.space):
            raise DeployError(f"{args.space!r} is not OWNER/SPACE")
        files = space_files(root)
    except DeployError as exc:
        print(f"deploy: {exc}")
        return 1
    sizes = [(root / path).stat().st_size for path in files]
    for path, size in zip(files, sizes):
        print(f"{size:>12,}  {path}")
    url = f"https://huggingface.co/spaces/{args.space}"
    print(f"{len(files)} files, {sum(sizes) / 1e6:.1f} MB")
    if args.dry_run:
        print(f"dry run: nothing uploaded; without --dry-run these become {url}")
        return 0
    from huggingface_hub import HfApi

    try:  # create the Gradio Space if needed and make it hold exactly ``files``
        api = HfApi()
        api.create_repo(args.space, repo_type="space", space_sdk="gradio", exist_ok=True)
        info = api.upload_folder(repo_id=args.space, repo_type="space", folder_path=str(root),
                                 allow_patterns=files, delete_patterns="*",
                                 commit_message="Deploy vit-demo (python -m vit_demo deploy)")
    except OSError as exc:  # huggingface_hub's HTTP and missing-token errors, the network
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"deploy: could not publish {url}: {detail}. Log in with `hf auth login` (a token "
              "with write access) or set HF_TOKEN, and check that OWNER is you or your "
              "organisation.")
        return 1
    print(f"uploaded: {info.commit_url}\nthe Space builds at {url}")
    return 0
