"""memscore.timing: the one clock every record stamps its time with."""
from __future__ import annotations

import datetime

from memscore.timing import utc_now


def test_the_clock_gives_utc_iso_to_the_second():
    stamp = utc_now()
    parsed = datetime.datetime.fromisoformat(stamp)
    assert stamp.endswith("+00:00") and parsed.microsecond == 0
    assert abs(parsed - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=1)
