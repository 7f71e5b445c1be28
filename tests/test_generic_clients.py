"""The README's buf curl examples, run as written against the real server.

Each ``buf curl`` command of the README's "Generic clients" section is run by bash (buf is a test
dependency: ``buf-bin`` puts it beside this interpreter), with the server's address in place of
``127.0.0.1:50051`` and the uploaded file's id in place of ``FILE_ID``. A subprocess per command:
buf is a program of its own.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

from tests.support.servers import clean_env
from tests.support.threaded import threaded_server

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_ADDRESS = "127.0.0.1:50051"


def buf_curl_examples() -> list[str]:
    """The ``buf curl`` commands of the README's "Generic clients" section, continuations and here-documents
    included, in the order they appear."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Generic clients", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        lines = iter(block.splitlines())
        for line in lines:
            if not line.startswith("buf curl"):
                continue
            command = [line]
            while command[-1].endswith("\\"):
                command.append(next(lines))
            if "<<'EOF'" in command[-1]:
                while command[-1] != "EOF":
                    command.append(next(lines))
            commands.append("\n".join(command) + "\n")
    return commands


def _responses(output: str) -> list[dict[str, Any]]:
    """buf curl prints each response as an indented JSON object, one after the other."""
    decoder = json.JSONDecoder()
    responses, at = [], 0
    while output[at:].strip():
        at += len(output[at:]) - len(output[at:].lstrip())
        response, at = decoder.raw_decode(output, at)
        responses.append(response)
    return responses


def test_the_readme_shows_every_kind_of_rpc_with_buf_curl() -> None:
    methods = " ".join(re.findall(r"StreamingService/(\w+)", " ".join(buf_curl_examples())))
    # Client streaming, unary, server streaming, bidirectional.
    assert methods.split() == [
        "UploadFile",
        "ListFiles",
        "DownloadFile",
        "PublishEvents",
        "StreamUserEvents",
        "ProcessLiveData",
    ]


def test_the_readme_buf_curl_examples_work(tmp_path: pathlib.Path) -> None:
    env = {**clean_env(), "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["BUF_CACHE_DIR"] = str(tmp_path / "buf-cache")
    outputs: dict[str, list[dict[str, Any]]] = {}
    with threaded_server(tmp_path / "data") as address:
        file_id = "FILE_ID"
        for command in buf_curl_examples():
            command = command.replace(README_ADDRESS, address).replace("FILE_ID", file_id)
            result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            if "--list-methods" in command:
                outputs["list"] = [{"methods": result.stdout.split()}]
                continue
            method = re.findall(r"\.(?:StreamingService|Health)/(\w+)", command)[0]
            outputs[method] = _responses(result.stdout)
            if method == "UploadFile":
                file_id = outputs[method][0]["fileId"]

    assert "streaming.v1.StreamingService/UploadFile" in outputs["list"][0]["methods"]
    [upload] = outputs["UploadFile"]
    assert (upload["bytesUploaded"], upload["checksumVerified"]) == ("6", True)
    assert [f["filename"] for f in outputs["ListFiles"][0]["files"]] == ["hello.txt"]
    downloaded = b"".join(base64.b64decode(r.get("data", "")) for r in outputs["DownloadFile"])
    assert downloaded == b"hello\n"
    assert [r["count"] for r in outputs["PublishEvents"]] == ["2"]  # one stream: both messages, one answer
    events = [e for r in outputs["StreamUserEvents"] for e in r.get("events", [])]
    assert [e["type"] for e in events] == ["USER_EVENT_TYPE_LOGIN", "USER_EVENT_TYPE_LOGOUT"]
    results = [x for r in outputs["ProcessLiveData"] for x in r["results"]]
    assert [x["value"] for x in results] == [1, 2, 40]
    assert results[2]["anomaly"] is True
    assert outputs["Check"] == [{"status": "SERVING"}]
