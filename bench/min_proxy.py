"""The least a Python proxy process can do, as a reference for the gateway's own cost: uvloop
streams, each client connection forwarded byte for byte over its own upstream connection to the
stand-in engine, answers framed by Content-Length. No parsing beyond that, no checks, no copies
it can avoid. Benchmark 2 times one client through it beside the gateway, so what any Python
process in the path costs on this machine is measured, not guessed.

Run as its own process: `python -m bench.min_proxy --port PORT --upstream-uds PATH`.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import uvloop

_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


async def _message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    match = _LENGTH.search(head)
    return head + (await reader.readexactly(int(match.group(1))) if match else b"")


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
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream_uds))


if __name__ == "__main__":
    main()
