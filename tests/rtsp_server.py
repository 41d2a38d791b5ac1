"""A small RTSP server for the tests: ffmpeg encodes a test pattern to RTP, this relays it.

ffmpeg's RTSP muxer can only push to a server, so this process plays the camera's part: it runs
ffmpeg (``-f rtp``) into two local UDP ports, answers OPTIONS, DESCRIBE, SETUP, PLAY,
GET_PARAMETER and TEARDOWN on a TCP port, and forwards every RTP and RTCP packet to each playing
client, interleaved on the RTSP connection (``RTP/AVP/TCP``) or to the client's UDP ports
(``RTP/AVP``). ffmpeg sends RTCP sender reports (wall clock against RTP time); the newest one is
also sent to a client when it starts playing, as a camera's next report would be, so the
client learns the sender's clock at once. With ``--user``/``--password`` every request needs
HTTP Basic credentials (401 otherwise).

With ``--audio`` the camera sends a second track, a tone (G.711 µ-law), set up by its own SETUP
as a camera's audio is. With ``--clock-step S``, SIGUSR1 steps the sender's wall clock by S
seconds, as NTP setting a camera's clock would: the sender reports from then on say their RTP
time was sent S seconds later, the last one of each track at once.

Run as a program; kill its process group to kill the camera (server and ffmpeg) at once::

    python tests/rtsp_server.py --port 8554 --size 160x120 --fps 25
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


class Client:
    """One RTSP connection and where its packets go."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()  # one writer at a time: replies and interleaved packets
        # each track set up: its RTP and RTCP channels on this connection, or its UDP destination
        self.interleaved: dict[int, tuple[int, int]] = {}
        self.udp: dict[int, tuple[str, int, int]] = {}  # host, RTP port, RTCP port
        self.playing = False

    def send(self, data: bytes) -> bool:
        try:
            with self.lock:
                self.sock.sendall(data)
            return True
        except OSError:
            return False


class RtspServer:
    def __init__(self, port: int, size: str, fps: int, user: str | None, password: str | None, gop: int,
                 audio: bool = False, clock_step_s: float = 0.0):
        self.port = port
        self.size = size
        self.fps = fps
        self.gop = gop
        self.audio = audio
        self.credentials = None if user is None else base64.b64encode(f"{user}:{password}".encode()).decode()
        self.clients: list[Client] = []
        self.clients_lock = threading.Lock()
        self.last_sender_reports: dict[int, bytes] = {}  # each track's newest, as ffmpeg sent it
        self.clock_step_s = clock_step_s
        self.clock_offset_s = 0.0  # added to the sender reports' wall clock: the steps taken so far
        self.step_pending = False  # set by SIGUSR1, taken by the relay
        self.session = str(int(time.time() * 1000) % 10_000_000)
        # per track (video, then audio): ffmpeg sends RTP and RTCP to the input pair; clients get
        # packets from the output pair
        tracks = 2 if audio else 1
        self.inputs = [_udp_pair() for _ in range(tracks)]
        self.outputs = [_udp_pair() for _ in range(tracks)]
        self.workdir = Path(tempfile.mkdtemp(prefix="rtsp-server-"))
        self.sdp_path = self.workdir / "stream.sdp"

    def start_camera(self) -> subprocess.Popen:
        destinations = [
            f"rtp://127.0.0.1:{rtp.getsockname()[1]}?rtcpport={rtcp.getsockname()[1]}&pkt_size=1200"
            for rtp, rtcp in self.inputs
        ]
        command = [
            FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-sdp_file", str(self.sdp_path),
            "-re", "-f", "lavfi", "-i", f"testsrc2=size={self.size}:rate={self.fps}",
        ]
        if self.audio:
            command += ["-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
        command += [
            "-map", "0:v", "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(self.gop),
            "-bf", "0", "-pix_fmt", "yuv420p", "-f", "rtp", "-payload_type", "96", destinations[0],
        ]
        if self.audio:
            command += ["-map", "1:a", "-c:a", "pcm_mulaw", "-ac", "1", "-f", "rtp", "-payload_type", "0",
                        destinations[1]]
        camera = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        media = ["m=video", "m=audio"][: len(self.inputs)]
        deadline = time.monotonic() + 20
        while not (self.sdp_path.exists() and all(m in self.sdp_path.read_text() for m in media)):
            if camera.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ffmpeg did not start (exit {camera.poll()})")
            time.sleep(0.02)
        return camera

    def describe(self) -> str:
        """ffmpeg's SDP with a control URL per media (``track0`` the video, ``track1`` the audio)
        and no fixed destination."""
        lines = []
        track = 0
        for line in self.sdp_path.read_text().splitlines():
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            elif line.startswith("m="):
                line = re.sub(r"^(m=\w+) \d+", r"\1 0", line)
            lines.append(line)
            if line.startswith("m="):
                lines.append(f"a=control:track{track}")
                track += 1
        return "\r\n".join(lines) + "\r\n"

    # --- RTP relay -----------------------------------------------------------------------------

    def relay(self) -> None:
        selector = selectors.DefaultSelector()
        for track, pair in enumerate(self.inputs):
            for rtcp, sock in enumerate(pair):
                selector.register(sock, selectors.EVENT_READ, (track, rtcp))
        while True:
            for key, _ in selector.select():
                data = key.fileobj.recv(65536)
                track, rtcp = key.data
                if rtcp and len(data) >= 16 and data[1] == 200:  # a sender report (RTCP type 200)
                    self.last_sender_reports[track] = data
                    data = self.stepped(data)
                self.forward(track, rtcp, data)
            if self.step_pending:
                self.step_pending = False
                self.clock_offset_s += self.clock_step_s
                for track, report in list(self.last_sender_reports.items()):
                    self.forward(track, 1, self.stepped(report))

    def stepped(self, report: bytes) -> bytes:
        """A sender report with its NTP time (bytes 8-16, seconds in 32.32 fixed point) moved by
        the clock's steps so far."""
        ntp = (int.from_bytes(report[8:16], "big") + round(self.clock_offset_s * 2**32)) % 2**64
        return report[:8] + ntp.to_bytes(8, "big") + report[16:]

    def forward(self, track: int, rtcp: int, data: bytes, only: Client | None = None) -> None:
        """Send a track's RTP (``rtcp`` 0) or RTCP (1) packet to each playing client that set it up."""
        with self.clients_lock:
            clients = [c for c in self.clients if c.playing and (only is None or c is only)]
        for client in clients:
            if track in client.interleaved:
                header = b"$" + bytes([client.interleaved[track][rtcp]]) + len(data).to_bytes(2, "big")
                if not client.send(header + data):
                    self.drop(client)
            elif track in client.udp:
                host, rtp_port, rtcp_port = client.udp[track]
                try:
                    self.outputs[track][rtcp].sendto(data, (host, rtcp_port if rtcp else rtp_port))
                except OSError:
                    pass

    def drop(self, client: Client) -> None:
        with self.clients_lock:
            if client in self.clients:
                self.clients.remove(client)
        try:
            client.sock.close()
        except OSError:
            pass

    # --- RTSP ----------------------------------------------------------------------------------

    def serve(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        print(f"rtsp server listening on {self.port}", flush=True)
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Client(sock)
            with self.clients_lock:
                self.clients.append(client)
            threading.Thread(target=self.converse, args=(client,), daemon=True).start()

    def converse(self, client: Client) -> None:
        reader = client.sock.makefile("rb")
        try:
            while True:
                first = reader.read(1)
                if not first:
                    break
                if first == b"$":  # the client's interleaved RTCP receiver reports
                    header = reader.read(3)
                    reader.read(int.from_bytes(header[1:3], "big"))
                    continue
                request_line = (first + reader.readline()).decode("latin-1").strip()
                if not request_line:
                    continue
                headers = {}
                while (line := reader.readline().decode("latin-1").strip()):
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                if int(headers.get("content-length", 0)):
                    reader.read(int(headers["content-length"]))
                if not self.answer(client, request_line, headers):
                    break
        except OSError:
            pass
        finally:
            self.drop(client)

    def answer(self, client: Client, request_line: str, headers: dict[str, str]) -> bool:
        method, url, _ = request_line.split(" ", 2)
        cseq = headers.get("cseq", "0")
        if self.credentials is not None and headers.get("authorization") != f"Basic {self.credentials}":
            client.send(
                f"RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\n"
                'WWW-Authenticate: Basic realm="segstream-test"\r\n\r\n'.encode()
            )
            return True
        extra = ""
        body = ""
        keep_open = True
        if method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            body = self.describe()
            base = url if url.endswith("/") else url + "/"
            extra = f"Content-Base: {base}\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            control = re.search(r"/track(\d+)$", url)
            track = int(control.group(1)) if control else 0
            if track >= len(self.inputs):
                client.send(f"RTSP/1.0 404 Not Found\r\nCSeq: {cseq}\r\n\r\n".encode())
                return True
            transport = headers.get("transport", "")
            interleaved = re.search(r"interleaved=(\d+)-(\d+)", transport)
            ports = re.search(r"client_port=(\d+)-(\d+)", transport)
            if interleaved:
                client.interleaved[track] = (int(interleaved.group(1)), int(interleaved.group(2)))
                reply = f"RTP/AVP/TCP;unicast;interleaved={interleaved.group(1)}-{interleaved.group(2)}"
            elif ports:
                host = client.sock.getpeername()[0]
                client.udp[track] = (host, int(ports.group(1)), int(ports.group(2)))
                rtp_out, rtcp_out = self.outputs[track]
                server_ports = f"{rtp_out.getsockname()[1]}-{rtcp_out.getsockname()[1]}"
                reply = f"RTP/AVP;unicast;client_port={ports.group(1)}-{ports.group(2)};server_port={server_ports}"
            else:
                client.send(f"RTSP/1.0 461 Unsupported Transport\r\nCSeq: {cseq}\r\n\r\n".encode())
                return True
            extra = f"Transport: {reply}\r\nSession: {self.session};timeout=60\r\n"
        elif method == "PLAY":
            extra = f"Session: {self.session}\r\nRange: npt=0.000-\r\n"
        elif method == "GET_PARAMETER":
            extra = f"Session: {self.session}\r\n"
        elif method == "TEARDOWN":
            extra = f"Session: {self.session}\r\n"
            keep_open = False
        else:
            client.send(f"RTSP/1.0 405 Method Not Allowed\r\nCSeq: {cseq}\r\n\r\n".encode())
            return True
        reply = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{extra}"
        if body:
            reply += f"Content-Length: {len(body.encode())}\r\n"
        client.send((reply + "\r\n" + body).encode())
        if method == "PLAY":
            client.playing = True
            for track, report in list(self.last_sender_reports.items()):
                self.forward(track, 1, self.stepped(report), only=client)
        return keep_open


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on consecutive ports (RTP even, RTCP odd, as RTP expects)."""
    for _ in range(100):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        if port % 2:
            rtp.close()
            continue
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtcp.bind(("127.0.0.1", port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        for s in (rtp, rtcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return rtp, rtcp
    raise SystemExit("no pair of free UDP ports")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", default="160x120")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=None, help="frames between keyframes (default: one second)")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--audio", action="store_true", help="send an audio track too")
    parser.add_argument("--clock-step", type=float, default=0.0,
                        help="seconds the sender's wall clock steps by at each SIGUSR1")
    args = parser.parse_args()
    server = RtspServer(args.port, args.size, args.fps, args.user, args.password, args.gop or args.fps,
                        audio=args.audio, clock_step_s=args.clock_step)
    camera = server.start_camera()

    def stop(signum, frame):
        camera.kill()
        shutil.rmtree(server.workdir, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, lambda signum, frame: setattr(server, "step_pending", True))
    threading.Thread(target=server.relay, daemon=True).start()
    threading.Thread(target=lambda: (camera.wait(), os._exit(1)), daemon=True).start()
    try:
        server.serve()
    finally:
        camera.kill()
        shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
