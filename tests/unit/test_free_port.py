"""free_port: a port for a server started a moment later, out of the kernel's way: above the
ephemeral range it hands out for outgoing connections and binds to port 0."""
import socket

from herald_stack import processes
from herald_stack.processes import free_port


def ephemeral_high() -> int:
    return int(processes.EPHEMERAL_RANGE.read_text().split()[1])


def test_the_port_is_above_the_ephemeral_range_and_can_be_bound():
    port = free_port()
    assert ephemeral_high() < port < 65_536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_port_in_use_is_never_given(monkeypatch):
    # Narrow the range above the ephemeral one to two ports and hold one of them.
    monkeypatch.setattr(processes.random, "sample", lambda population, k: [65_534, 65_535])
    with socket.socket() as held:
        held.bind(("127.0.0.1", 65_534))
        held.listen()
        assert free_port() == 65_535


def test_the_kernel_picks_when_no_port_above_the_range_is_free(monkeypatch, tmp_path):
    no_room = tmp_path / "ip_local_port_range"
    no_room.write_text("32768\t65535\n")
    monkeypatch.setattr(processes, "EPHEMERAL_RANGE", no_room)
    port = free_port()
    assert 0 < port < 65_536
