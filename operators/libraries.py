"""The libraries the operators share, imported whole by the first operator module to load.

PyFlink's thread mode opens every operator of a TaskManager on its own thread of one
interpreter: each thread unpickles its function (importing its module) and runs its ``open()``
(importing its clients) at the same moment. CPython hands a thread a half-initialised module
when two threads meet in an import cycle (redis-py and PyFlink have several), and the broken
module then stays in ``sys.modules`` for every restart after it. Each operator module imports
this one first: the other threads wait on its import lock until the libraries below are whole
(tests/unit/test_concurrent_imports.py)."""
import pyflink.common  # noqa: F401
import pyflink.datastream.functions  # noqa: F401
import pyflink.datastream.state  # noqa: F401
import redis  # noqa: F401
import redis.asyncio  # noqa: F401
import redis.cluster  # noqa: F401
