"""The floor under any fan-out on this machine: one thread writing the same ~1 KB to 1,000
loopback TCP sockets whose readers wait in epoll in two other processes, as the stream
benchmark's clients do. No framework, no WebSocket handshake, nothing parsed: what is
left is the kernel's work per write (on loopback the sender's CPU also runs the receiving
side's TCP path and wakes the reader)."""

import selectors
import socket
import statistics
import subprocess
import sys
import time

FRAME = b"\x81\x7e\x04\x00" + b"x" * 1024  # a 1 KB WebSocket text frame, as sent
ROUNDS = 15


def _reader(port: int, n: int) -> None:
    """Connect n sockets and read (and drop) whatever arrives, until they close."""
    selector = selectors.DefaultSelector()
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if not sock.recv(65536):
                    return
            except ConnectionError:
                return


def measure(clients: int, processes: int) -> list[float]:
    """Seconds to write FRAME once to every client, one round a second."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(clients)
        port = listener.getsockname()[1]
        readers = [
            subprocess.Popen([sys.executable, "-m", "bench.write_floor", str(port),
                              str(clients // processes)], stdout=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]  # fmt: skip
        conns = []
        for _ in range(clients // processes * processes):
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        times = []
        for _ in range(ROUNDS):
            time.sleep(1)
            started = time.perf_counter()
            for conn in conns:
                conn.send(FRAME)
            times.append(time.perf_counter() - started)
        for conn in conns:
            conn.close()
        for reader in readers:
            reader.wait(timeout=30)
    return times


def median_ms(clients: int, processes: int) -> float:
    return statistics.median(measure(clients, processes)) * 1000


if __name__ == "__main__":
    _reader(int(sys.argv[1]), int(sys.argv[2]))
