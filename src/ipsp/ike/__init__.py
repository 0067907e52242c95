"""IKEv2 (RFC 7296): sans-IO building blocks. See :mod:`ipsp.ike.message` for the codec."""
