"""The least a Python proxy process can do, as a reference for the gateway's own cost: uvloop
streams, each client connection forwarded byte for byte over its own upstream connection to the
stand-in engine, answers framed by Content-Length. No parsing beyond that, no checks, no copies
it can avoid. Benchmark 2 times one client through it beside the gateway, so what any Python
process in the path costs on this machine is measured, not guessed.

With `--upstream-client aiohttp` the same proxy makes its upstream call with a pooled aiohttp
session set up as the gateway's is: the difference is what the HTTP client library costs.

Run as its own process: `python -m bench.min_proxy --port PORT --upstream-uds PATH [--upstream-client aiohttp]`.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import uvloop

_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
_AUTH = re.compile(rb"\r\nauthorization:\s*([^\r]*)", re.IGNORECASE)


async def _message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    match = _LENGTH.search(head)
    return head + (await reader.readexactly(int(match.group(1))) if match else b"")


async def serve_with_aiohttp(port: int, upstream: str) -> None:
    import aiohttp
    from yarl import URL

    session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=upstream, keepalive_timeout=3),
                                    cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _message(reader)
                head, body = request.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode()
                auth = _AUTH.search(head)
                headers = {"content-type": "application/json", "authorization": auth.group(1).decode() if auth else ""}
                async with session.post(URL("http://localhost" + path), data=body, headers=headers) as resp:
                    answer = await resp.read()
                writer.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                             % (resp.status, len(answer)) + answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def serve(port: int, upstream: str) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(upstream)
        try:
            while True:
                up_writer.write(await _message(reader))
                writer.write(await _message(up_reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            up_writer.close()

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--upstream-uds", required=True, help="the stand-in engine's Unix socket")
    parser.add_argument("--upstream-client", choices=("raw", "aiohttp"), default="raw",
                        help="forward bytes on raw streams (default), or call upstream with aiohttp")
    args = parser.parse_args()
    uvloop.run((serve_with_aiohttp if args.upstream_client == "aiohttp" else serve)(args.port, args.upstream_uds))


if __name__ == "__main__":
    main()
