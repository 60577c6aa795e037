#!/usr/bin/python3
"""The conformance suite's in-pod helper (Python 3 standard library only).

Started with ``ip netns exec NETNS python3 podagent.py MODE --name NS/POD``:

``serve``  serves TCP and UDP on the given ports (default 80 and 81) on every
           address of the netns (IPv4, and IPv6 when the netns has it). A TCP
           client gets the line ``NS/POD\\n`` and the connection is closed; a UDP
           datagram is answered with ``NS/POD``. Prints ``ready`` once listening.

``probe``  the probe agent: reads JSON lines on stdin
           ``{"id": N, "ip": "...", "port": 80, "proto": "TCP"|"UDP", "timeout": 1.0}``
           and answers each, in the order they finish, with a JSON line
           ``{"id": N, "ok": true|false, "reply": "x/a", "error": "timeout", "ms": 3.1}``.
           All requests run concurrently. ``ok`` means a reply came back within
           the timeout (for TCP: connected AND the server's line was read, so a
           handshake that completes but whose data is dropped counts as
           blocked). Prints ``ready`` at start; exits at EOF on stdin.
"""

import argparse
import asyncio
import json
import socket
import sys
import time


# --------------------------------------------------------------------------- serve

class _Udp(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes):
        self.reply = reply
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            self.transport.sendto(self.reply, addr)
        except OSError:
            pass


async def serve(name: str, ports: list[int]) -> None:
    reply = (name + "\n").encode()
    loop = asyncio.get_running_loop()

    async def on_tcp(reader, writer):
        try:
            writer.write(reply)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    servers = []
    for host, fam in (("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)):
        for port in ports:
            try:
                tsock = socket.socket(fam, socket.SOCK_STREAM)
                usock = socket.socket(fam, socket.SOCK_DGRAM)
            except OSError:
                if fam == socket.AF_INET6:  # IPv6 disabled in this netns
                    break
                raise
            for s in (tsock, usock):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                tsock.bind((host, port))
                usock.bind((host, port))
            except OSError:
                tsock.close()
                usock.close()
                if fam == socket.AF_INET6:
                    break
                raise
            tsock.listen(512)
            servers.append(await asyncio.start_server(on_tcp, sock=tsock))
            await loop.create_datagram_endpoint(lambda: _Udp(reply.strip()), sock=usock)
    print("ready", flush=True)
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- probe

class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future):
        self.fut = fut

    def datagram_received(self, data, addr):
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc):
        if not self.fut.done():
            self.fut.set_exception(exc)


async def _probe_tcp(ip: str, port: int, timeout: float) -> str:
    async def go():
        reader, writer = await asyncio.open_connection(ip, port)
        try:
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise ConnectionError("connected, but the server sent nothing")
        return line.decode(errors="replace").strip()
    return await asyncio.wait_for(go(), timeout)


async def _probe_udp(ip: str, port: int, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _UdpClient(fut), remote_addr=(ip, port))
    try:
        transport.sendto(b"probe")
        data = await asyncio.wait_for(fut, timeout)
        return data.decode(errors="replace").strip()
    finally:
        transport.close()


async def _one(req: dict, out_lock: asyncio.Lock) -> None:
    t0 = time.monotonic()
    res = {"id": req.get("id")}
    try:
        proto = req.get("proto", "TCP").upper()
        fn = _probe_udp if proto == "UDP" else _probe_tcp
        res["reply"] = await fn(req["ip"], int(req["port"]), float(req.get("timeout", 1.0)))
        res["ok"] = True
    except asyncio.TimeoutError:
        res["ok"], res["error"] = False, "timeout"
    except ConnectionRefusedError:
        res["ok"], res["error"] = False, "refused"
    except ConnectionResetError:
        res["ok"], res["error"] = False, "reset"
    except Exception as e:  # noqa: BLE001 - every failure is an answer
        res["ok"], res["error"] = False, f"{type(e).__name__}: {e}"
    res["ms"] = round((time.monotonic() - t0) * 1000, 1)
    async with out_lock:
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


async def probe() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out_lock = asyncio.Lock()
    tasks = set()
    print("ready", flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            req = json.loads(line)
        except json.JSONDecodeError:
            continue
        t = asyncio.ensure_future(_one(req, out_lock))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "probe"])
    ap.add_argument("--name", default="?")
    ap.add_argument("--ports", default="80,81")
    a = ap.parse_args()
    try:
        if a.mode == "serve":
            asyncio.run(serve(a.name, [int(p) for p in a.ports.split(",")]))
        else:
            asyncio.run(probe())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
