"""Messages between nodes of one process without DDS: the package's intra-process path.

rclpy has no intra-process communication: a 1920x1080 image between two nodes of one process is
serialised into a DDS sample and back (about 20 ms here), and even the ``mp_shm`` handles cost
two copies and a DDS message. Where ``focal_fusion_node`` and ``depth_node`` run in one process
(``pipeline_process``, ``micro-perception run``), a publisher hands its message to the
subscriptions of the same topic in the same process (same context) directly:

* Images travel as the publisher's array itself, read-only, never copied. A publisher must not
  change an array after publishing it (the package's publishers build a new one every time).
* Other messages (camera_info) are copied, as they are small and publishers reuse them.
* Each subscription keeps the newest ``depth`` messages (QoS keep-last) and hands them to its
  node's executor through a guard condition, so callbacks run where they always run, not on the
  publisher's thread.
* The DDS topic is still published while anyone outside the process subscribes to it (rviz, a
  rosbag recorder): local subscriptions create no DDS subscription, so they do not count there.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
from collections import deque
from collections.abc import Callable

from micro_perception.ros.sync import SimpleFilter

_lock = threading.Lock()
_publishers: dict[tuple[int, str], int] = {}
_subscriptions: dict[tuple[int, str], list[LocalSubscription]] = {}
_watchers: dict[tuple[int, str], list[Callable[[], None]]] = {}
_tokens = itertools.count(1)


def topic_key(node, topic: str) -> tuple[int, str]:
    """A topic within one rclpy context: nodes of other contexts (another ROS domain, a test's
    second graph) are other processes as far as the graph is concerned. Contexts get a token of
    their own rather than their id(), which a later context may reuse."""
    ctx = node.context
    with _lock:
        token = getattr(ctx, "_micro_perception_token", None)
        if token is None:
            token = ctx._micro_perception_token = next(_tokens)
    return (token, node.resolve_topic_name(topic))


def has_publisher(key: tuple[int, str]) -> bool:
    with _lock:
        return _publishers.get(key, 0) > 0


def watch(key: tuple[int, str], wake: Callable[[], None]) -> Callable[[], None]:
    """Calls ``wake()`` whenever a publisher of ``key`` starts in this process, so an input can
    switch to it at once instead of at its next check; returns the function that stops it."""
    with _lock:
        _watchers.setdefault(key, []).append(wake)

    def stop() -> None:
        with _lock:
            if wake in _watchers.get(key, []):
                _watchers[key].remove(wake)

    return stop


def subscriptions(key: tuple[int, str]) -> list[LocalSubscription]:
    with _lock:
        return list(_subscriptions.get(key, ()))


class LocalPublisher:
    """Announces a publisher of ``topic`` in this process and hands messages to its local
    subscriptions. ``copy_messages``: give each subscription a deep copy (small messages a
    publisher may reuse) instead of the object itself."""

    def __init__(self, node, topic: str, copy_messages: bool = True):
        self.key = topic_key(node, topic)
        self.copy_messages = copy_messages
        self.closed = False
        with _lock:
            _publishers[self.key] = _publishers.get(self.key, 0) + 1
            wakes = list(_watchers.get(self.key, ()))
        for wake in wakes:
            with contextlib.suppress(Exception):  # a watcher whose node is gone
                wake()

    def subscription_count(self) -> int:
        return len(subscriptions(self.key))

    def publish(self, msg) -> None:
        """Hands ``msg`` to every local subscription."""
        for sub in subscriptions(self.key):
            sub.put(copy.deepcopy(msg) if self.copy_messages else msg)

    def close(self) -> None:
        with _lock:
            if not self.closed:
                self.closed = True
                left = _publishers.get(self.key, 0) - 1
                if left > 0:
                    _publishers[self.key] = left
                else:
                    _publishers.pop(self.key, None)


class LocalSubscription:
    """Receives ``topic`` from publishers of this process; ``callback(msg)`` runs on the node's
    executor. Keeps the newest ``depth`` messages; older ones are dropped and counted.

    ``direct``: the callback runs at once on the publisher's thread, one message at a time,
    with no executor wake-up (about 0.5 ms of rclpy in Python). Only for callbacks that merely
    hand the message on under a lock of their own (depth_node's synchroniser and its
    newest-pair worker); anything touching the node's other state belongs on its executor."""

    def __init__(self, node, topic: str, callback: Callable, depth: int, direct: bool = False):
        self.key = topic_key(node, topic)
        self.node, self.callback, self.direct = node, callback, direct
        self.queue: deque = deque(maxlen=max(1, int(depth)))
        self.dropped = 0
        self._qlock = threading.Lock()
        self.guard = None if direct else node.create_guard_condition(self._drain)
        with _lock:
            _subscriptions.setdefault(self.key, []).append(self)

    def put(self, msg) -> None:
        if self.direct:
            with self._qlock:  # one message at a time, in order, whichever thread publishes
                try:
                    self.callback(msg)
                except Exception as exc:  # the subscriber's fault, not the publisher's
                    self.node.get_logger().error(
                        f"{self.key[1]}: in-process callback failed: {type(exc).__name__}: {exc}",
                        throttle_duration_sec=2.0,
                    )
            return
        with self._qlock:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1
            self.queue.append(msg)
        try:
            self.guard.trigger()
        except Exception:  # its node was destroyed without closing it: it is gone
            self.close()

    def _drain(self) -> None:
        while True:
            with self._qlock:
                if not self.queue:
                    return
                msg = self.queue.popleft()
            self.callback(msg)

    def close(self) -> None:
        with _lock:
            subs = _subscriptions.get(self.key, [])
            if self in subs:
                subs.remove(self)
                if not subs:
                    _subscriptions.pop(self.key, None)
        if self.guard is not None:
            with contextlib.suppress(Exception):  # the node may be destroyed already
                self.node.destroy_guard_condition(self.guard)


class MessagePublisher:
    """An rclpy publisher that also serves subscriptions of this process: each gets a copy, and
    the DDS topic is published only while someone outside the process subscribes."""

    def __init__(self, node, msg_type, topic: str, qos):
        self.dds = node.create_publisher(msg_type, topic, qos)
        self.local = LocalPublisher(node, topic, copy_messages=True)

    def get_subscription_count(self) -> int:
        return self.dds.get_subscription_count() + self.local.subscription_count()

    def publish(self, msg) -> None:
        self.local.publish(msg)
        if self.dds.get_subscription_count() > 0:
            self.dds.publish(msg)

    def close(self) -> None:
        self.local.close()


class LocalInput(SimpleFilter):
    """A synchroniser input (message_filters.Subscriber) that takes ``topic`` from a publisher
    of this process while there is one. Subclasses subscribe over DDS otherwise, in
    ``_check``. Checked every ``CHECK_PERIOD`` seconds and at once when a publisher starts in
    the process, so either side may start first."""

    CHECK_PERIOD = 1.0

    def __init__(self, node, topic: str, qos, direct: bool = False):
        super().__init__()
        self.node, self.qos, self.direct = node, qos, direct
        self.topic = node.resolve_topic_name(topic)
        self.local: LocalSubscription | None = None
        self._unwatch = None
        self.received = {"local": 0}  # subclasses add their DDS paths' counts

    def getTopic(self) -> str:  # noqa: N802 - message_filters API
        return self.topic

    def _watch(self) -> None:
        """Starts checking: now, every CHECK_PERIOD, and when a local publisher starts (on this
        node's executor)."""
        self._check()
        self.timer = self.node.create_timer(self.CHECK_PERIOD, self._check)
        self._wake = self.node.create_guard_condition(self._check)
        self._unwatch = watch(topic_key(self.node, self.topic), self._wake.trigger)

    def _check(self) -> None:
        raise NotImplementedError

    def _take_local(self) -> bool:
        """Whether a publisher of this process serves the topic; subscribes to it if so, and
        lets go of it if not."""
        if has_publisher(topic_key(self.node, self.topic)):
            if self.local is None:
                self.local = LocalSubscription(
                    self.node, self.topic, self._on_local, _depth(self.qos), self.direct
                )
            return True
        if self.local is not None:
            self.local.close()
            self.local = None
        return False

    def _on_local(self, msg) -> None:
        self.received["local"] += 1
        self.signalMessage(msg)

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.local is not None:
            self.local.close()
            self.local = None


class MessageInput(LocalInput):
    """A :class:`LocalInput` for any message type (camera_info): a publisher of this process
    when there is one, else the DDS topic."""

    def __init__(self, node, msg_type, topic: str, qos, direct: bool = False):
        super().__init__(node, topic, qos, direct)
        self.msg_type = msg_type
        self.dds_sub = None
        self.received["dds"] = 0
        self._watch()

    @property
    def using(self) -> str:
        return "local" if self.local is not None else "dds"

    def _check(self) -> None:
        if self._take_local():
            if self.dds_sub is not None:
                self.node.destroy_subscription(self.dds_sub)
                self.dds_sub = None
        elif self.dds_sub is None:
            self.dds_sub = self.node.create_subscription(
                self.msg_type, self.topic, self._on_dds, self.qos
            )

    def _on_dds(self, msg) -> None:
        self.received["dds"] += 1
        self.signalMessage(msg)


def _depth(qos) -> int:
    """The history depth of a QoSProfile or a plain depth."""
    return int(getattr(qos, "depth", qos) or 1)
