"""What the tests' hand-written stub devices share: a connected flag and nothing else."""


class ConnectFlag:
    """``connect``/``disconnect``/``is_connected`` for a stub device that has no hardware."""

    _connected = False

    def connect(self):
        self._connected = True

    def disconnect(self):
        self._connected = False

    @property
    def is_connected(self):
        return self._connected
