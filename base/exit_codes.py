"""The exit codes of every ``mld`` command, in one table (docs/CLI.md lists them too).

=====  ====================  ===========================================================
code   name                  meaning
=====  ====================  ===========================================================
0      ``EXIT_OK``           done; a service stopped cleanly (SIGTERM, Ctrl-C, a limit)
1      ``EXIT_ERROR``        an ML Defender error (bad config, key file, model bundle,
                             endpoint, etcd), or a check that did not pass (``mld gateway
                             run --check``, ``mld lab run``); the message says which
2      ``EXIT_USAGE``        a bad command line (argparse's own code), or no command
3      ``EXIT_REFUSED``      ``mld anomaly train`` built a model and refused it; the model
                             that serves is unchanged
4      ``EXIT_SOME_FAILED``  some inputs could not be read (``mld sniffer flows``,
                             ``mld detector analyze``, ``mld watch run --once``); every
                             other input was still processed and its output written
=====  ====================  ===========================================================

A code keeps its meaning across commands, so a script can tell "nothing happened" (1)
from "most of it happened" (4) without knowing which command it ran.
"""

from __future__ import annotations

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_REFUSED", "EXIT_SOME_FAILED", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_SOME_FAILED = 4
