"""IKE and ESP proposals: strongSwan's keywords, the SA payload's transforms, and the
responder's choice (RFC 7296 2.7 and 3.3).

A configured proposal is written as strongSwan writes it: ``aes128gcm16-prfsha256-x25519``,
``aes256-sha256-modp2048`` for the IKE SA, ``aes128gcm16``, ``aes256-sha256``,
``chacha20poly1305`` (optionally ``-x25519`` etc. for PFS on rekeying) for ESP. One keyword
becomes one Proposal substructure; the responder takes the first of its own proposals that
the initiator also offered (strongSwan's default, ``prefer_configured_proposals``), so the
choice is the responder's policy, not the initiator's order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipsp.errors import ConfigError
from ipsp.ike.message import (Attribute, DhGroup, EncrId, EsnId, IntegId, PrfId, Proposal, ProtocolId,
                              Transform, TransformAttr, TransformType)
from ipsp.errors import shown
from ipsp.transforms import DH_GROUPS, parse_esp_proposal

__all__ = ["IkeProposal", "EspProposal", "parse_ike", "parse_esp", "choose_ike", "choose_esp",
           "DH_KEYWORDS", "NoProposalChosen"]


class NoProposalChosen(ValueError):
    """Nothing offered is acceptable (RFC 7296 notify NO_PROPOSAL_CHOSEN)."""


DH_KEYWORDS = DH_GROUPS           # one table for IKE and ESP proposals (ipsp.transforms)
_PRF = {"prfsha1": PrfId.PRF_HMAC_SHA1, "prfsha256": PrfId.PRF_HMAC_SHA2_256,
        "prfsha384": PrfId.PRF_HMAC_SHA2_384, "prfsha512": PrfId.PRF_HMAC_SHA2_512}
# integrity keyword -> (IKE integrity id, the PRF strongSwan pairs with it when none is named)
_INTEG = {"sha1": (IntegId.AUTH_HMAC_SHA1_96, PrfId.PRF_HMAC_SHA1),
          "sha256": (IntegId.AUTH_HMAC_SHA2_256_128, PrfId.PRF_HMAC_SHA2_256),
          "sha384": (IntegId.AUTH_HMAC_SHA2_384_192, PrfId.PRF_HMAC_SHA2_384),
          "sha512": (IntegId.AUTH_HMAC_SHA2_512_256, PrfId.PRF_HMAC_SHA2_512)}
_GCM_ICV = {8: EncrId.ENCR_AES_GCM_8, 12: EncrId.ENCR_AES_GCM_12, 16: EncrId.ENCR_AES_GCM_16}
_AEAD = {EncrId.ENCR_AES_GCM_8, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_16, EncrId.ENCR_CHACHA20_POLY1305}


def _cipher(word: str) -> tuple[int, int]:
    """(ENCR id, key bits) of a cipher keyword such as aes256, aes128gcm16, chacha20poly1305."""
    if word == "chacha20poly1305":
        return EncrId.ENCR_CHACHA20_POLY1305, 256
    for bits in (128, 192, 256):
        if word == f"aes{bits}":
            return EncrId.ENCR_AES_CBC, bits
        for icv, encr in _GCM_ICV.items():
            if word in (f"aes{bits}gcm{icv}", f"aes{bits}gcm{icv * 8}"):
                return encr, bits
    raise ConfigError(f"unknown cipher {shown(word)} (known: aes128, aes192, aes256, "
                      "aes128gcm16 (and 8, 12; 192, 256), chacha20poly1305)")


def _encr_transform(encr: int, bits: int) -> Transform:
    # ChaCha20-Poly1305 has one key length and takes no Key Length attribute (RFC 7634 2)
    attrs = () if encr == EncrId.ENCR_CHACHA20_POLY1305 else (Attribute(TransformAttr.KEY_LENGTH, bits),)
    return Transform(TransformType.ENCR, encr, attrs)


@dataclass(frozen=True)
class IkeProposal:
    """One IKE SA proposal: a cipher, a PRF, integrity (none for AEAD), DH groups."""

    name: str
    encr: int
    key_bits: int
    prf: int
    integ: int
    groups: tuple[int, ...]

    @property
    def aead(self) -> bool:
        return self.encr in _AEAD

    def payload(self, number: int, spi: bytes = b"") -> Proposal:
        t = [_encr_transform(self.encr, self.key_bits), Transform(TransformType.PRF, self.prf)]
        if not self.aead:
            t.append(Transform(TransformType.INTEG, self.integ))
        t += [Transform(TransformType.DH, g) for g in self.groups]
        return Proposal(number, ProtocolId.IKE, spi, tuple(t))


@dataclass(frozen=True)
class EspProposal:
    """One ESP proposal: the ipsp transform it names, and DH groups for PFS (rekeying)."""

    name: str                    # the ipsp transform name (ipsp.transforms), e.g. aes256-sha256
    encr: int
    key_bits: int
    integ: int
    groups: tuple[int, ...] = ()

    @property
    def aead(self) -> bool:
        return self.encr in _AEAD

    def payload(self, number: int, spi: bytes, *, pfs: bool) -> Proposal:
        t = [_encr_transform(self.encr, self.key_bits)]
        if not self.aead:
            t.append(Transform(TransformType.INTEG, self.integ))
        # the IKE_AUTH child takes its keys from the IKE SA's exchange: no DH there (RFC 7296 1.2)
        if pfs:
            t += [Transform(TransformType.DH, g) for g in self.groups]
        t.append(Transform(TransformType.ESN, EsnId.NO_ESN))
        return Proposal(number, ProtocolId.ESP, spi, tuple(t))


def parse_ike(text: str) -> IkeProposal:
    """``aes128gcm16-prfsha256-x25519``, ``aes256-sha256-modp2048``, ``aes128-sha256-prfsha384-ecp256``."""
    words = text.strip().lower().split("-")
    encr, bits = _cipher(words[0])
    prf = integ = None
    groups = []
    for w in words[1:]:
        if w in _PRF:
            prf = _PRF[w]
        elif w in _INTEG and encr not in _AEAD and integ is None:
            integ, implied = _INTEG[w]
            prf = prf or implied
        elif w in DH_KEYWORDS:
            groups.append(int(DH_KEYWORDS[w]))
        else:
            raise ConfigError(f"unknown or misplaced keyword {shown(w)} after {words[0]} in an IKE proposal")
    if encr in _AEAD and prf is None:
        raise ConfigError(f"IKE proposal {words[0]}-... uses an AEAD cipher: name its PRF (e.g. prfsha256)")
    if encr not in _AEAD and integ is None:
        raise ConfigError(f"IKE proposal {words[0]}-... needs an integrity algorithm (e.g. sha256)")
    if not groups:
        raise ConfigError(f"IKE proposal {words[0]}-... names no Diffie-Hellman group (e.g. x25519, modp2048)")
    return IkeProposal(text.strip().lower(), int(encr), bits, int(prf), int(integ or 0), tuple(groups))


def parse_esp(text: str) -> EspProposal:
    """``aes128gcm16``, ``aes256-sha256``, ``chacha20poly1305``, ``aes128gcm16-x25519`` (PFS)."""
    transform, groups = parse_esp_proposal(text)      # an ESP transform ipsp's kernel implements
    cipher, _, integ_word = transform.name.partition("-")
    encr, bits = _cipher(cipher)               # and one IKE can negotiate
    integ = 0
    if encr not in _AEAD:
        if integ_word not in _INTEG:
            raise ConfigError(f"ESP proposal {transform.name}: IKE negotiates sha1, sha256, sha384 or sha512 "
                              "integrity")
        integ = _INTEG[integ_word][0]
    return EspProposal(transform.name, int(encr), bits, int(integ), groups)


# -- the responder's choice (RFC 7296 2.7, 3.3.6) ----------------------------------------------

def _by_type(p: Proposal) -> dict[int, list[tuple[int, int]]]:
    """Transform type -> offered (id, key bits) pairs; unknown attributes make a transform unusable."""
    out: dict[int, list[tuple[int, int]]] = {}
    for t in p.transforms:
        bits = 0
        usable = True
        for a in t.attributes:
            if a.type == TransformAttr.KEY_LENGTH and isinstance(a.value, int):
                bits = a.value
            else:
                usable = False          # RFC 7296 3.3.6: a transform with an unknown attribute is skipped
        if usable:
            out.setdefault(t.type, []).append((t.id, bits))
    return out


def _offers(types: dict, kind: int, ident: int, bits: int = 0) -> bool:
    return any(i == ident and b == bits for i, b in types.get(kind, ()))


def choose_ike(offered: tuple[Proposal, ...], ours: tuple[IkeProposal, ...]) -> tuple[IkeProposal, Proposal, int]:
    """Our first proposal the initiator offered; returns it, the accepted Proposal substructure
    to send back (one transform of each type, the initiator's proposal number) and the DH group.
    Raises NoProposalChosen."""
    for mine in ours:
        for p in offered:
            if p.protocol_id != ProtocolId.IKE or len(p.spi) not in (0, 8):
                continue
            types = _by_type(p)
            bits = 0 if mine.encr == EncrId.ENCR_CHACHA20_POLY1305 else mine.key_bits
            if not _offers(types, TransformType.ENCR, mine.encr, bits) or not _offers(types, TransformType.PRF, mine.prf):
                continue
            if not mine.aead and not _offers(types, TransformType.INTEG, mine.integ):
                continue
            if mine.aead and any(i != IntegId.NONE for i, _ in types.get(TransformType.INTEG, ())):
                if not _offers(types, TransformType.INTEG, IntegId.NONE):
                    continue
            group = next((g for g in mine.groups if _offers(types, TransformType.DH, g)), None)
            if group is None:
                continue
            chosen = IkeProposal(mine.name, mine.encr, mine.key_bits, mine.prf, mine.integ, (group,))
            return chosen, chosen.payload(p.number, p.spi), group
    raise NoProposalChosen("no offered IKE proposal matches " + ", ".join(m.name for m in ours))


def choose_esp(offered: tuple[Proposal, ...], ours: tuple[EspProposal, ...], *, pfs_group: int | None = None
               ) -> tuple[EspProposal, Proposal]:
    """Our first ESP proposal the initiator offered, without ESN (ipsp's kernel supports ESN,
    strongSwan's userspace ESP does not: both sides must offer NO_ESN). With *pfs_group* (a
    CREATE_CHILD_SA that carries KE) the proposal must include that group. Returns our
    proposal and the accepted substructure (the initiator's number and its SPI left for the
    caller to replace). Raises NoProposalChosen."""
    for mine in ours:
        for p in offered:
            if p.protocol_id != ProtocolId.ESP or len(p.spi) != 4:
                continue
            types = _by_type(p)
            bits = 0 if mine.encr == EncrId.ENCR_CHACHA20_POLY1305 else mine.key_bits
            if not _offers(types, TransformType.ENCR, mine.encr, bits):
                continue
            if not mine.aead and not _offers(types, TransformType.INTEG, mine.integ):
                continue
            esn = types.get(TransformType.ESN)
            if esn is not None and not _offers(types, TransformType.ESN, EsnId.NO_ESN):
                continue
            dh = [i for i, _ in types.get(TransformType.DH, ()) if i != DhGroup.NONE]
            if pfs_group is not None:
                if pfs_group not in dh or (mine.groups and pfs_group not in mine.groups):
                    continue
                chosen = EspProposal(mine.name, mine.encr, mine.key_bits, mine.integ, (pfs_group,))
            else:
                chosen = EspProposal(mine.name, mine.encr, mine.key_bits, mine.integ, ())
            return chosen, chosen.payload(p.number, p.spi, pfs=pfs_group is not None)
    raise NoProposalChosen("no offered ESP proposal matches " + ", ".join(m.name for m in ours))


def accepted_ike(reply: Proposal, offered: tuple[IkeProposal, ...]) -> tuple[IkeProposal, int]:
    """The initiator's check of the responder's choice: one transform of each type, one of ours."""
    types = _by_type(reply)
    if any(len(v) != 1 for v in types.values()):
        raise NoProposalChosen("the responder accepted more than one transform of a type")
    (encr, bits), = types.get(TransformType.ENCR, [(None, 0)])
    (prf, _), = types.get(TransformType.PRF, [(None, 0)])
    (integ, _), = types.get(TransformType.INTEG, [(IntegId.NONE, 0)])
    (group, _), = types.get(TransformType.DH, [(None, 0)])
    for mine in offered:
        want_bits = 0 if mine.encr == EncrId.ENCR_CHACHA20_POLY1305 else mine.key_bits
        if (mine.encr, want_bits, mine.prf) == (encr, bits, prf) and group in mine.groups \
                and (mine.integ if not mine.aead else IntegId.NONE) == integ:
            return IkeProposal(mine.name, mine.encr, mine.key_bits, mine.prf, mine.integ, (group,)), group
    raise NoProposalChosen("the responder chose an IKE proposal we did not offer")


def accepted_esp(reply: Proposal, offered: tuple[EspProposal, ...], *, pfs_group: int | None = None) -> EspProposal:
    """The initiator's check of the responder's ESP choice."""
    types = _by_type(reply)
    if reply.protocol_id != ProtocolId.ESP or len(reply.spi) != 4 or any(len(v) != 1 for v in types.values()):
        raise NoProposalChosen("the responder's ESP proposal is not a single choice with a 4-byte SPI")
    (encr, bits), = types.get(TransformType.ENCR, [(None, 0)])
    (integ, _), = types.get(TransformType.INTEG, [(IntegId.NONE, 0)])
    (esn, _), = types.get(TransformType.ESN, [(EsnId.NO_ESN, 0)])
    group = types.get(TransformType.DH, [(None, 0)])[0][0]
    if esn != EsnId.NO_ESN or (pfs_group is not None and group != pfs_group):
        raise NoProposalChosen("the responder chose ESN or another PFS group")
    for mine in offered:
        want_bits = 0 if mine.encr == EncrId.ENCR_CHACHA20_POLY1305 else mine.key_bits
        if (mine.encr, want_bits) == (encr, bits) and (mine.integ if not mine.aead else IntegId.NONE) == integ:
            return EspProposal(mine.name, mine.encr, mine.key_bits, mine.integ, () if group is None else (group,))
    raise NoProposalChosen("the responder chose an ESP proposal we did not offer")
