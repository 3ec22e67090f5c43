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
"""``fuse-cinder-allinone``: the command line of the all-in-one."""

import argparse
from collections.abc import Sequence
import signal
import sys
import types
from typing import NoReturn

from fuse_cinder.allinone import api_client
from fuse_cinder.allinone import deployment
from fuse_cinder.allinone import errors
from fuse_cinder.allinone import service_runner


def parse_deploy_args(
        argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog='fuse-cinder-allinone',
        description='Run a whole fuse_cinder deployment on this machine '
                    'as root: a private tgtd, a FUSE mount and Cinder API, '
                    'scheduler and one volume backend in one process '
                    '(fake transport, SQLite, noauth, loopback). Ctrl-C '
                    'stops everything. Unrecognised arguments, such as '
                    '--config-file, are handed to Cinder.',
        epilog='With --state-dir only the Cinder services run, in this '
               'process; see "fuse-cinder-allinone --state-dir DIR --help".')
    parser.add_argument('--work-dir',
                        help='Directory for the configuration, database, '
                             'logs and, without --volumes-home, the volume '
                             'files; kept, so a later run with it finds '
                             'its volumes again (default: a new directory '
                             'in /var/tmp, removed at the end).')
    parser.add_argument('--volumes-home',
                        help='Keep the volumes in this directory of an '
                             'existing FUSE mount (default: bindfs over '
                             'WORK_DIR/backing).')
    parser.add_argument('--api-port', type=int,
                        help='API port on 127.0.0.1 (default: the first '
                             'free one of 18780-18789).')
    parser.add_argument('--tgt-control-port', type=int,
                        help='Control port of the private tgtd (default: '
                             'the first free one of 41-49).')
    parser.add_argument('--target-port', type=int,
                        help='iSCSI portal port on 127.0.0.1 (default: the '
                             'first free one of 13281-13289).')
    parser.add_argument('--self-check', action='store_true',
                        help='Create, export, write and read over iSCSI, '
                             'unexport and delete a volume, then stop.')
    parser.add_argument('--unprivileged', action='store_true',
                        help='Run the Cinder services as a throw-away '
                             'system user whose only root power is sudo '
                             'cinder-rootwrap with the package\'s filters '
                             '(README install step 4); the user, its '
                             'sudoers file and /etc/fuse-cinder-aio-* are '
                             'removed at the end.')
    parser.add_argument('--debug', action='store_true')
    return parser.parse_known_args(argv)


def _raise_stop(signo: int, frame: types.FrameType | None) -> NoReturn:
    raise errors.Stop(signo)


def _still_stopping(signo: int, frame: types.FrameType | None) -> None:
    sys.stdout.write('fuse-cinder-allinone: still stopping, please wait\n')
    sys.stdout.flush()


def deploy(argv: Sequence[str], out: api_client.Out | None = None) -> int:
    """The whole deployment; returns the exit code."""
    def say(line: str) -> None:
        sys.stdout.write('%s\n' % line)
        sys.stdout.flush()

    out = out or say
    args, cinder_args = parse_deploy_args(argv)
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signo: signal.signal(signo, _raise_stop) for signo in signals}
    code = 1
    dep = None
    try:
        dep = deployment.Deployment(args, cinder_args, out)
        out('work dir: %s' % dep.work_dir)
        dep.start()
        dep.print_environment()
        if args.self_check:
            dep.self_check()
            out('self-check passed')
            code = 0
        else:
            dep.wait()
    except errors.Stop as stop:
        out('caught signal %d' % stop.args[0])
        code = 0
    except errors.LaunchError as err:
        out('ERROR: %s' % err)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for signo in signals:
            signal.signal(signo, _still_stopping)
        try:
            if dep is not None:
                left = dep.stop()
                if left:
                    out('ERROR: left behind: %s' % ', '.join(left))
                    code = 1
                else:
                    out('stopped: no targets, mounts or processes left')
        finally:
            for signo, handler in previous.items():
                signal.signal(signo, handler)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == '--state-dir' or a.startswith('--state-dir=')
           for a in argv):
        return service_runner.run_services(argv)
    return deploy(argv)
