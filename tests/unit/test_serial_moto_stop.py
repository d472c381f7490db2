"""serial_moto's stop signal is never swallowed by waitress's event loop (tests/integration/test_dev_stop.py shows
it under traffic; this pins the mechanism, deterministically)."""

import select

import pytest
from waitress import wasyncore

from onysoft_tools.serial_moto import _Stop


class _Channel:
    """A socket's channel whose read event is where the stop signal's handler raised."""

    handled_error = False

    def handle_read_event(self):
        raise _Stop("SIGTERM")

    def handle_error(self):
        self.handled_error = True


def test_a_stop_raised_inside_a_socket_event_leaves_waitress_loop():
    channel = _Channel()
    with pytest.raises(_Stop):
        wasyncore.readwrite(channel, select.POLLIN)
    assert not channel.handled_error


def test_an_ordinary_exception_there_would_have_been_swallowed():
    """The check above can fail: waitress hands anything but SystemExit, KeyboardInterrupt and ExitNow to the
    channel and goes on."""

    class Other(_Channel):
        def handle_read_event(self):
            raise RuntimeError("SIGTERM")

    channel = Other()
    wasyncore.readwrite(channel, select.POLLIN)
    assert channel.handled_error
