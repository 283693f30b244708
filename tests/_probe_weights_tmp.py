import os, httpx
from conftest import free_port, save_tiny_scratch
def test_probe(tmp_path, data_dir):
    from vit_demo.ui import build_demo, create_context, launch_kwargs
    w = tmp_path / "w"; w.mkdir()
    save_tiny_scratch(w, "vit-scratch-cifar10")
    (w / ".vit-scratch-cifar10.safetensors.abc.tmp").write_bytes(b"partial")
    (w / "notes.txt").write_text("secret")
    os.symlink("/etc/passwd", w / "link.json")
    ctx = create_context(w, data_dir, allow_hub=False); demo = build_demo(ctx); port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(w))
    for f in sorted(os.listdir(w)):
        r = httpx.get(f"http://127.0.0.1:{port}/gradio_api/file={w / f}")
        print(f, r.status_code, r.content[:20])
    demo.close()
