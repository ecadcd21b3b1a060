"""Images between processes of one host through shared memory: ``mp_shm`` transport.

Serialising a 1920x1080 rgb8 image into a DDS sample and back costs tens of milliseconds in
rclpy; copying it costs half a millisecond. So, like ``image_transport``'s compressed topics,
an image topic ``T`` gets a companion ``T/mp_shm`` (sensor_msgs/CompressedImage). The publisher
writes each image once into a ring of slots in POSIX shared memory and publishes only a handle:
the header, and in ``format`` the segment, slot, sequence number, encoding, size and host. The
subscriber copies the image out of the slot (one memcpy) and checks the sequence number before
and after, so an image overwritten while being read is dropped, never torn.

* The plain topic ``T`` stays: it is published only while someone subscribes to it (rviz, a
  rosbag recorder, another host), so nothing changes for other tools.
* :class:`ImageInput` (a synchroniser input) takes the images straight from the publisher when
  it lives in the same process (``micro_perception.ros.intra_process``: no copy, no DDS), else
  the handle topic when a publisher offers it and the host matches, and otherwise subscribes to
  ``T``: a camera driver, a bag, or a node on another machine work unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import mmap
import os
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from micro_perception.errors import InputError
from micro_perception.ros import intra_process
from micro_perception.ros.conversions import numpy_to_image

SUFFIX = "mp_shm"
SHM_DIR = Path("/dev/shm")
MAGIC = b"MPSHM001"
_GLOBAL = struct.Struct("<8sIQ")  # magic, slots, slot bytes
_SLOT = struct.Struct("<QQ")  # sequence (odd while written), bytes
_SLOT_HEAD = 64  # bytes reserved before each slot's data (keeps the data aligned)


def host_id() -> str:
    """This machine's identity: the hostname and the kernel's boot id (same host, same boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "-"
    return f"{socket.gethostname()}/{boot}"


class ShmRing:
    """A ring of equal slots in one POSIX shared-memory segment (a file in /dev/shm, mapped);
    one writer, any readers. Plain mmap rather than multiprocessing.shared_memory, whose
    resource tracker is an extra process and unlinks segments it did not create."""

    def __init__(self, slot_bytes: int, slots: int = 16, name: str | None = None):
        self.slots, self.slot_bytes = int(slots), int(slot_bytes)
        self.name = name or f"mp_shm_{uuid.uuid4().hex[:16]}"
        size = _GLOBAL.size + self.slots * (_SLOT_HEAD + self.slot_bytes)
        try:
            fd = os.open(SHM_DIR / self.name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise InputError(f"cannot create shared memory {SHM_DIR / self.name}: {exc}") from None
        try:
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        except OSError as exc:
            os.unlink(SHM_DIR / self.name)
            raise InputError(f"cannot map {size} bytes of shared memory: {exc}") from None
        finally:
            os.close(fd)
        self.buf = memoryview(self.mm)
        _GLOBAL.pack_into(self.buf, 0, MAGIC, self.slots, self.slot_bytes)
        self.owner = True
        self.seq = 0

    @classmethod
    def attach(cls, name: str) -> ShmRing:
        if "/" in name or name.startswith("."):
            raise InputError(f"bad shared-memory segment name {name!r}")
        ring = cls.__new__(cls)
        ring.name, ring.owner, ring.seq = name, False, 0
        try:
            fd = os.open(SHM_DIR / name, os.O_RDONLY)
            try:
                ring.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            raise InputError(f"shared-memory segment {name} cannot be opened: {exc}") from None
        ring.buf = memoryview(ring.mm)
        if len(ring.buf) < _GLOBAL.size:
            ring.close()
            raise InputError(f"shared-memory segment {name} is not an mp_shm ring")
        magic, ring.slots, ring.slot_bytes = _GLOBAL.unpack_from(ring.buf, 0)
        if magic != MAGIC or len(ring.buf) < ring._offset(ring.slots):
            ring.close()
            raise InputError(f"shared-memory segment {name} is not an mp_shm ring")
        return ring

    def _offset(self, slot: int) -> int:
        return _GLOBAL.size + slot * (_SLOT_HEAD + self.slot_bytes)

    def write(self, data: np.ndarray) -> tuple[int, int]:
        """Copy ``data`` (any C-contiguous array) into the next slot: (slot, sequence)."""
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if flat.nbytes > self.slot_bytes:
            raise InputError(f"{flat.nbytes} bytes do not fit a {self.slot_bytes}-byte slot")
        self.seq += 1
        slot = self.seq % self.slots
        off = self._offset(slot)
        buf = self.buf
        _SLOT.pack_into(buf, off, 2 * self.seq - 1, flat.nbytes)  # odd: being written
        dst = np.frombuffer(buf, np.uint8, flat.nbytes, off + _SLOT_HEAD)
        dst[:] = flat
        _SLOT.pack_into(buf, off, 2 * self.seq, flat.nbytes)
        return slot, self.seq

    def read(self, slot: int, seq: int) -> np.ndarray | None:
        """A copy of the slot's bytes if it still holds image ``seq``, else None."""
        if not 0 <= slot < self.slots:
            return None
        off = self._offset(slot)
        buf = self.buf
        before, nbytes = _SLOT.unpack_from(buf, off)
        if before != 2 * seq or nbytes > self.slot_bytes:
            return None
        out = np.frombuffer(buf, np.uint8, nbytes, off + _SLOT_HEAD).copy()
        after, _ = _SLOT.unpack_from(buf, off)
        return out if after == before else None

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.buf.release()
            self.mm.close()
        if self.owner:
            self.owner = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_DIR / self.name)


@dataclass
class Handle:
    name: str
    slot: int
    seq: int
    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int
    host: str

    def format(self) -> str:
        return ";".join(
            [
                SUFFIX,
                self.name,
                str(self.slot),
                str(self.seq),
                self.encoding,
                str(self.height),
                str(self.width),
                str(self.step),
                str(self.is_bigendian),
                self.host,
            ]
        )

    @classmethod
    def parse(cls, text: str) -> Handle:
        parts = text.split(";")
        if len(parts) != 10 or parts[0] != SUFFIX:
            raise InputError(f"not an {SUFFIX} handle: {text[:80]!r}")
        try:
            return cls(parts[1], *map(int, parts[2:4]), parts[4], *map(int, parts[5:9]), parts[9])
        except ValueError:
            raise InputError(f"malformed {SUFFIX} handle: {text[:80]!r}") from None


@dataclass
class ShmImage:
    """What image_to_numpy and the synchroniser need of a sensor_msgs/Image."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


class ImagePublisher:
    """Publishes an image topic and its ``mp_shm`` companion, each only while subscribed, and
    hands the array itself to subscribers in this process: do not change an array after
    publishing it."""

    def __init__(self, node, topic: str, qos, slots: int = 16):
        topic = node.resolve_topic_name(topic)  # remapped: the companion follows the remap
        self.topic = topic
        self.raw = node.create_publisher(Image, topic, qos)
        self.handles = node.create_publisher(CompressedImage, f"{topic}/{SUFFIX}", qos)
        self.slots = slots
        self.ring: ShmRing | None = None
        self.host = host_id()
        self.node = node
        self._lock = threading.Lock()
        self.local = intra_process.LocalPublisher(node, topic, copy_messages=False)
        atexit.register(self.close)

    def get_subscription_count(self) -> int:
        handles = self.handles.get_subscription_count() if self.handles is not None else 0
        return self.raw.get_subscription_count() + handles + self.local.subscription_count()

    def publish(self, arr: np.ndarray, encoding: str, header: Header) -> None:
        if self.local.subscription_count() > 0:
            self.local.publish(_local_image(arr, encoding, header))
        if self.raw.get_subscription_count() > 0:
            self.raw.publish(numpy_to_image(arr, encoding, header))
        if self.handles is not None and self.handles.get_subscription_count() > 0:
            msg = numpy_to_image(arr[:1], encoding)  # validates; gives step and endianness
            arr = np.ascontiguousarray(arr)
            with self._lock:
                if self.ring is None or self.ring.slot_bytes < arr.nbytes:
                    if self.ring is not None:
                        self.ring.close()
                    try:
                        self.ring = ShmRing(arr.nbytes, self.slots)
                    except InputError as exc:
                        self._give_up_shm(exc)
                        return
                slot, seq = self.ring.write(arr)
                name = self.ring.name
            h = Handle(
                name,
                slot,
                seq,
                encoding,
                arr.shape[0],
                arr.shape[1],
                msg.step,
                msg.is_bigendian,
                self.host,
            )
            self.handles.publish(CompressedImage(header=header, format=h.format()))

    def _give_up_shm(self, exc: Exception) -> None:
        # Withdrawing the companion topic sends "auto" subscribers back to the plain topic.
        self.node.get_logger().warning(f"{self.topic}: no shared-memory transport ({exc})")
        self.node.destroy_publisher(self.handles)
        self.handles = self.ring = None

    def close(self) -> None:
        self.local.close()
        with self._lock:
            if self.ring is not None:
                self.ring.close()
                self.ring = None


def _local_image(arr: np.ndarray, encoding: str, header: Header) -> ShmImage:
    """The image for subscribers in this process: the array's own bytes, read-only (a copy only
    where it is not contiguous, e.g. a channel-reversed view)."""
    msg = numpy_to_image(arr[:1], encoding)  # validates; gives step and endianness
    arr = np.ascontiguousarray(arr)
    data = arr.reshape(-1).view(np.uint8)
    data.flags.writeable = False  # a view: the publisher's array stays as it was
    return ShmImage(
        copy.deepcopy(header),
        arr.shape[0],
        arr.shape[1],
        encoding,
        msg.is_bigendian,
        msg.step,
        data,
    )


class ImageInput(intra_process.LocalInput):
    """A synchroniser input for image topic ``topic``: with ``transport`` auto, the publisher's
    arrays when it lives in this process, else the ``mp_shm`` handles while a publisher on this
    host offers them, else the plain topic. shm and raw force one of the last two."""

    def __init__(
        self, node, topic: str, qos, transport: str = "auto", on_error=None, direct=False
    ):
        if transport not in ("auto", "shm", "raw"):
            raise InputError(f"image transport must be auto, shm or raw, got {transport!r}")
        # Resolved (remapped) by LocalInput: the companion follows the remap.
        super().__init__(node, topic, qos, direct)
        self.transport = transport
        self.on_error = on_error or (lambda text: None)
        self.host = host_id()
        self.rings: dict[str, ShmRing] = {}
        self.shm_failed = False
        self.received |= {"shm": 0, "raw": 0}
        self.handle_sub = self.raw_sub = None
        if transport == "raw":
            self._subscribe_raw()
        elif transport == "shm":
            self._subscribe_handles()
        else:
            self._watch()

    @property
    def using(self) -> str:
        if self.local is not None:
            return "local"
        return "raw" if self.raw_sub is not None else "shm"

    def _subscribe_raw(self) -> None:
        if self.raw_sub is None:
            self.raw_sub = self.node.create_subscription(Image, self.topic, self._on_raw, self.qos)

    def _subscribe_handles(self) -> None:
        if self.handle_sub is None:
            self.handle_sub = self.node.create_subscription(
                CompressedImage, f"{self.topic}/{SUFFIX}", self._on_handle, self.qos
            )

    def _check(self) -> None:
        if self._take_local():
            # The publisher is in this process: no DDS subscription, so it publishes none.
            for sub in (self.raw_sub, self.handle_sub):
                if sub is not None:
                    self.node.destroy_subscription(sub)
            self.raw_sub = self.handle_sub = None
            return
        self._subscribe_handles()
        offered = self.node.count_publishers(f"{self.topic}/{SUFFIX}") > 0
        if offered and not self.shm_failed:
            if self.raw_sub is not None:
                self.node.destroy_subscription(self.raw_sub)
                self.raw_sub = None
        else:
            self._subscribe_raw()

    def _on_raw(self, msg: Image) -> None:
        self.received["raw"] += 1
        self.signalMessage(msg)

    def _on_handle(self, msg: CompressedImage) -> None:
        if self.raw_sub is not None and self.transport == "auto":
            return  # the plain topic is in use: the same images arrive there
        try:
            h = Handle.parse(msg.format)
            if h.host != self.host:
                raise InputError(f"{self.topic}/{SUFFIX} comes from another host ({h.host})")
            ring = self.rings.get(h.name)
            if ring is None:
                for old in self.rings.values():  # the publisher moved to a bigger segment
                    old.close()
                self.rings = {h.name: ShmRing.attach(h.name)}
                ring = self.rings[h.name]
            data = ring.read(h.slot, h.seq)
        except InputError as exc:
            if self.transport == "auto":
                self.shm_failed = True
                self._subscribe_raw()
            self.on_error(
                f"{exc}; using {self.topic} instead" if self.transport == "auto" else str(exc)
            )
            return
        if data is None:
            self.on_error(
                f"{self.topic}/{SUFFIX}: image {h.seq} was overwritten before it "
                "was read (the subscriber is too slow); dropped"
            )
            return
        self.received["shm"] += 1
        self.signalMessage(
            ShmImage(msg.header, h.height, h.width, h.encoding, h.is_bigendian, h.step, data)
        )

    def close(self) -> None:
        super().close()
        for ring in self.rings.values():
            ring.close()
        self.rings = {}
