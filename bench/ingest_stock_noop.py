"""A stock aiosmtpd 1.4.6 server whose handler does nothing: the baseline of bench/ingest."""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP


class NoOp:
    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        return "250 OK"


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = NoOp()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="stock.test", loop=loop), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
