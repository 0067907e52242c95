"""ipsp.ike.transport.IkeDaemon on real sockets: two daemons with their own engines on loopback
addresses (high ports, so no privileges are needed), each owning its IKE and NAT-T sockets (no
gateway): the handshake moves to the NAT-T port, the engines get mirrored SAs, control calls
and status work from another thread, stop() deletes the IKE SA at the peer."""

import time



from ike_loop import socket_daemon as daemon
from nslib import free_udp_ports


def test_two_daemons_on_loopback():
    port = free_udp_ports(2)
    b = daemon("b", "a", "127.0.0.2", "127.0.0.1", port, start="none")
    a = daemon("a", "b", "127.0.0.1", "127.0.0.2", port, start="start")
    b.start()
    a.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sa_a, sa_b = a.status()["ike_sas"], b.status()["ike_sas"]
            if sa_a and sa_b and sa_a[0]["children"] and sa_b[0]["children"]:
                break
            time.sleep(0.05)
        (ia,), (ib,) = a.status()["ike_sas"], b.status()["ike_sas"]
        assert ia["state"] == ib["state"] == "established"
        assert ia["remote"] == f"127.0.0.2:{port + 1}" and ib["remote"] == f"127.0.0.1:{port + 1}"   # NAT-T port
        out_a = {s.spi: s for s in a.engine.km.sad if s.direction == "out"}
        in_b = {s.spi: s for s in b.engine.km.sad if s.direction == "in"}
        assert set(out_a) == set(in_b) and len(out_a) == 1
        spi = next(iter(out_a))
        assert out_a[spi].config.enc_key == in_b[spi].config.enc_key and out_a[spi].config.udp
        assert a.call(a.ike.rekey, "c") == 1
        time.sleep(0.5)
        assert a.status()["counters"]["child_rekeyed"] == 1
        text = a.prometheus()
        assert 'ipsp_ike_sas{state="established"} 1' in text and "ipsp_ike_child_sas 1" in text
        assert 'ipsp_ike_messages_total{kind="child_rekeyed"} 1' in text
    finally:
        a.stop()
        time.sleep(0.3)
        b_after = b.status()
        b.stop()
    assert b_after["ike_sas"] == [] and b_after["counters"]["ike_deleted"] == 1
    assert not list(a.engine.km.sad)
