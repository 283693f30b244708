"""The app is an MCP server: agents get /classify, /rollout and the other read-only endpoints as
tools, with the parameters the API has; the fine-tune job's stop and status and the latency
benchmark are not tools."""

from __future__ import annotations

import ast
import asyncio
import json
import urllib.request

TOOLS = {"classify_image": "classify", "attention_rollout": "rollout", "compare_models": "compare",
         "inside_figures": "inside", "status": "status", "finetune": "finetune",
         "forward_walkthrough": "walkthrough"}


def mcp_schema(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{url}gradio_api/mcp/schema", timeout=30) as response:
        return {tool["name"]: tool for tool in json.load(response)}


def api_parameters(client, endpoint: str) -> list[str]:
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    return [p["parameter_name"] for p in info["parameters"]]


def test_mcp_tools_are_the_read_only_endpoints_with_their_api_parameters(app, client):
    tools = mcp_schema(app[0])
    assert {name: tool["meta"]["endpoint_name"] for name, tool in tools.items()} == TOOLS
    for name, endpoint in TOOLS.items():
        schema = tools[name]["inputSchema"]
        assert list(schema["properties"]) == api_parameters(client, f"/{endpoint}"), name
        assert tools[name]["description"], name
    classify = tools["classify_image"]["inputSchema"]
    assert list(classify["properties"]) == ["image", "model"] and classify["required"] == ["image"]
    assert "url" in classify["properties"]["image"]["format"]  # Gradio says URL; data: URLs go
    assert "scratch" in classify["properties"]["model"]["enum"]
    rollout = tools["attention_rollout"]["inputSchema"]["properties"]
    assert rollout["method"]["enum"] == ["grad", "rollout", "raw"]
    assert tools["inside_figures"]["inputSchema"].get("required", []) == []  # the image is optional
    walk = tools["forward_walkthrough"]["inputSchema"]
    assert list(walk["properties"]) == ["image", "model"] and walk["required"] == ["image"]
    assert "logit lens" in tools["forward_walkthrough"]["description"]


def test_an_agent_lists_and_calls_tools_over_the_mcp_protocol(app, client):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session():
        async with streamable_http_client(f"{app[0]}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                listed = await s.list_tools()
                answer = await s.call_tool("status", {})
                return [t.name for t in listed.tools], answer

    names, answer = asyncio.run(session())
    assert sorted(names) == sorted(TOOLS)
    assert not answer.isError
    assert ast.literal_eval(answer.content[0].text) == client.predict(api_name="/status")


def test_an_agent_sends_images_inline_and_a_web_address_is_refused(app, cifar_test):
    """Over MCP an image goes in as a data: URL; an http(s) URL is refused without a download
    (limits: the server never fetches a visitor's URL)."""
    import base64
    import io

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(cifar_test.x[0].numpy()).save(buffer, format="PNG")
    inline = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    async def session():
        async with streamable_http_client(f"{app[0]}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as s:
                await s.initialize()
                return [await s.call_tool("classify_image", {"image": image, "model": "scratch"})
                        for image in (inline, "http://127.0.0.1:9/cat.png")]

    sent_inline, sent_url = asyncio.run(session())
    assert not sent_inline.isError and "confidences" in sent_inline.content[0].text
    assert sent_url.isError and "Cannot fetch an image from a web address" in str(sent_url.content)
