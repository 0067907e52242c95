"""PacketBatch: a ready-made arena for the batch calls.

One contiguous buffer cut into fixed-size slots, each packet copied in at ``headroom`` bytes
into its slot so that encapsulation can write headers in front of it and the trailer after
it without moving it; offset, length and status arrays index the packets. Callers with their
own memory layout pass their arrays to SAState.encap_batch / decap_batch directly.
"""

from array import array

from fastpath.status import Status


# a slot holds one packet: at most 65,535 bytes of IP (a TSO/GRO super-packet too) and its
# head and tail room; a larger stride is a mistake that would allocate gigabytes
MAX_STRIDE = 1 << 20


class PacketBatch:
    """Up to *capacity* packets of at most ``stride - headroom - tailroom`` bytes each
    (stride at most MAX_STRIDE)."""

    def __init__(self, capacity, stride=2048, headroom=128):
        for name, v in (("capacity", capacity), ("stride", stride), ("headroom", headroom)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an integer, not {type(v).__name__}")
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if headroom < 0 or stride <= headroom:
            raise ValueError(f"need 0 <= headroom < stride, got headroom {headroom}, stride {stride}")
        if stride > MAX_STRIDE:
            raise ValueError(f"stride must be at most {MAX_STRIDE} bytes, got {stride}")
        if capacity > 0xffffffff:
            raise ValueError(f"capacity must be at most {0xffffffff} packets, got {capacity}")
        self.capacity = capacity
        self.stride = stride
        self.headroom = headroom
        self.buffer = bytearray(capacity * stride)
        self.offsets = array("q", bytes(8 * capacity))
        self.lengths = array("I", bytes(4 * capacity))
        self.status = array("B", bytes(capacity))
        self._count = 0

    def __len__(self):
        return self._count

    def clear(self):
        self._count = 0

    def append(self, packet) -> int:
        """Copy *packet* into the next slot; returns its index."""
        cdef Py_ssize_t i = self._count
        if i >= self.capacity:
            raise IndexError(f"the batch is full ({self.capacity} packets)")
        data = memoryview(packet).cast("B")
        if len(data) > self.stride - self.headroom:
            raise ValueError(f"a {len(data)}-byte packet does not fit a {self.stride}-byte slot "
                             f"after {self.headroom} bytes of headroom")
        off = i * self.stride + self.headroom
        self.buffer[off:off + len(data)] = data
        self.offsets[i] = off
        self.lengths[i] = len(data)
        self.status[i] = Status.NOT_PROCESSED
        self._count = i + 1
        return i

    def extend(self, packets):
        for p in packets:
            self.append(p)

    def packet(self, i) -> memoryview:
        """A zero-copy view of packet *i* as it is now (input, or result after a call)."""
        if not isinstance(i, int):
            raise TypeError(f"packet index must be an integer, not {type(i).__name__}")
        if not 0 <= i < self._count:
            raise IndexError(f"packet index {i} out of range for {self._count} packets")
        off = self.offsets[i]
        return memoryview(self.buffer)[off:off + self.lengths[i]]

    def __iter__(self):
        for i in range(self._count):
            yield self.packet(i)

    def ok(self):
        """Indices of the packets whose last call succeeded, in order."""
        return [i for i in range(self._count) if self.status[i] == Status.OK]

    def encap(self, sa) -> int:
        """Encapsulate every packet in place with *sa*; returns how many succeeded."""
        n = self._count
        return sa.encap_batch(self.buffer, memoryview(self.offsets)[:n], memoryview(self.lengths)[:n],
                              memoryview(self.status)[:n], self.stride)

    def decap(self, sa, *, verify=True) -> int:
        """Decapsulate every packet in place with *sa*; returns how many succeeded."""
        n = self._count
        return sa.decap_batch(self.buffer, memoryview(self.offsets)[:n], memoryview(self.lengths)[:n],
                              memoryview(self.status)[:n], verify=verify)
