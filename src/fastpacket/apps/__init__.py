"""Applications served by ``fastpacket serve``: each is an app in the
runtime's sense (see fastpacket.runtime) and imports only the library.

- ``relay`` (fastpacket.apps.relay): rooms; every MOVE goes to its room;
- ``echo`` (fastpacket.apps.echo): every packet back to its sender;
- ``tick`` (fastpacket.apps.tick): an authoritative tick server (inputs in,
  one numpy world step per tick, states out).

``BUILTIN`` maps the short names the command line accepts to import strings
and whether they name a factory.
"""

from typing import Dict, Tuple

__all__ = ["BUILTIN"]

#: short name -> (import string, is a factory)
BUILTIN: Dict[str, Tuple[str, bool]] = {
    "relay": ("fastpacket.apps.relay:Relay", True),
    "echo": ("fastpacket.apps.echo:echo", False),
    "tick": ("fastpacket.apps.tick:Tick", True),
}
