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
"""Cinder API, scheduler and volume service in a single process.

For trying the driver and for functional tests: no message broker
(``transport_url = fake:/``, which only works inside one process), a
SQLite database, ``noauth`` (an extra config file that sets another
``auth_strategy`` is refused before anything starts: the readiness
probe speaks noauth) and one backend.  It is not a production
deployment: README.rst "Multi-process deployment" runs the three services
separately, on RabbitMQ and MariaDB.

Two ways to run it:

``fuse-cinder-allinone [--work-dir DIR] [--volumes-home DIR] [--self-check]
[--unprivileged]``
    The whole deployment on this machine, as root: applies the export
    patches to the Cinder this Python imports (if not applied yet),
    starts a private tgtd on a loopback portal, mounts bindfs over a
    local directory unless ``--volumes-home`` names a directory of an
    existing FUSE mount, runs the Cinder services in a child process,
    prints the ``cinder`` CLI environment and waits.  SIGINT (Ctrl-C) or
    SIGTERM stops everything: no target, mount or process is left.
    ``--unprivileged`` runs that child as a throw-away user whose only
    root power is ``sudo cinder-rootwrap`` with the package's filters
    (README install step 4); the user is removed at the end.

``fuse-cinder-allinone --state-dir DIR --api-port 8776 --volumes-home ...``
    Only the Cinder services, in this process; tgtd and the mount are the
    caller's.  This is what the whole deployment runs as its child.
    A ``cinder.conf`` is generated in the state directory from the
    options; ``--config-file`` files given after it override any of its
    values.  The database schema is created or upgraded at every start.
    SIGTERM or SIGINT stops all three services.
"""
