#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""``cinder export`` and ``cinder delete-export`` for python-cinderclient.

python-cinderclient loads every top-level module whose name ends in
``cinderclient_ext`` and turns its ``do_*`` functions into commands, so
installing this module is all it takes: the client itself is not patched.
The commands drive the ``os-export`` / ``os-delete-export`` volume actions
added to Cinder by ``fuse-cinder-patch apply``.  They need no microversion
(python-cinderclient stops at 3.71, so a newer one would be unreachable).

Python 3.12 and later: python-cinderclient (up to 9.10 at least) looks the
module up with ``FileFinder.find_module``, which 3.12 removed, so *any*
``*cinderclient_ext`` module makes the plain ``cinder`` command fail with
``AttributeError: 'FileFinder' object has no attribute 'find_module'``.
There, run ``fuse-cinder`` instead: it is the same client (all ``cinder``
commands plus these two) with the missing lookup method put back for its
own process only.  On 3.11 both ``cinder`` and ``fuse-cinder`` work.
"""

import importlib.machinery
import importlib.util
import json
import sys

from cinderclient import exceptions
from cinderclient import utils
import prettytable

# The fields an initiator needs first, in the order a person reads them.
_MAIN_FIELDS = ('volume_id', 'driver_volume_type', 'target_portal',
                'target_iqn', 'target_lun', 'auth_method', 'auth_username',
                'auth_password')


def _flatten(volume, connection_info):
    """One flat mapping per volume: driver data plus the protocol."""
    info = connection_info or {}
    row = dict(info.get('data') or {})
    row['driver_volume_type'] = info.get('driver_volume_type')
    row.setdefault('volume_id', volume.id)
    return row


def _print_table(row):
    """Print the main fields first, the driver's extras after them."""
    table = prettytable.PrettyTable(['Property', 'Value'], caching=False)
    table.align = 'l'
    keys = [k for k in _MAIN_FIELDS if k in row]
    keys += sorted(k for k in row if k not in _MAIN_FIELDS)
    for key in keys:
        value = row[key]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        table.add_row([key, value])
    print(table.get_string())


def _for_each_volume(cs, names, action, verb):
    """Run action(volume) on every volume, reporting each failure.

    Fails (non-zero exit) only when no volume succeeded, like
    ``cinder delete`` does.
    """
    results = []
    for name in names:
        try:
            volume = utils.find_volume(cs, name)
            results.append((volume, action(volume)))
        except Exception as e:
            print('%s of volume %s failed: %s' % (verb, name, e),
                  file=sys.stderr)
    if not results:
        raise exceptions.CommandError(
            'Unable to %s any of the specified volumes.' % verb.lower())
    return results


@utils.arg('volume', metavar='<volume>', nargs='+',
           help='Name or ID of the volume(s) to export.')
@utils.arg('--json', action='store_true', default=False,
           help='Print the connection information as a JSON list.')
def do_export(cs, args):
    """Export available volumes to a host outside Nova (iSCSI target).

    Prints what the host needs to log in: portal, IQN, LUN and the CHAP
    credentials.  The volume stays in the 'exported' status until
    delete-export.
    """
    def export(volume):
        resp, body = cs.volumes._action('os-export', volume)
        return _flatten(volume, (body or {}).get('connection_info'))

    results = _for_each_volume(cs, args.volume, export, 'Export')
    if args.json:
        print(json.dumps([row for _vol, row in results], indent=2,
                         sort_keys=True))
        return
    for _volume, row in results:
        _print_table(row)


@utils.arg('volume', metavar='<volume>', nargs='+',
           help='Name or ID of the exported volume(s).')
def do_delete_export(cs, args):
    """Remove the export of volumes and make them available again."""
    def delete_export(volume):
        cs.volumes._action('os-delete-export', volume)

    for volume, _none in _for_each_volume(cs, args.volume, delete_export,
                                          'Delete-export'):
        print('Export of volume %s removed.' % volume.id)


class _SpecLoader(object):
    """Loader with the legacy load_module() that cinderclient calls."""

    def __init__(self, spec):
        self.spec = spec

    def load_module(self, name):
        if name in sys.modules:
            return sys.modules[name]
        module = importlib.util.module_from_spec(self.spec)
        sys.modules[name] = module
        try:
            self.spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module


def _find_module(self, fullname):
    spec = self.find_spec(fullname)
    if spec is None or spec.loader is None:
        return None
    return _SpecLoader(spec)


def install_find_module_shim():
    """Give FileFinder back the find_module() Python 3.12 removed.

    Only for the process of the ``fuse-cinder`` command; returns whether
    anything was installed (False on Python 3.11 and older).
    """
    finder = importlib.machinery.FileFinder
    if hasattr(finder, 'find_module'):
        return False
    finder.find_module = _find_module
    return True


def main():
    """Console script ``fuse-cinder``: the cinder client, on any Python."""
    install_find_module_shim()
    from cinderclient import shell
    return shell.main()


if __name__ == '__main__':
    sys.exit(main())
