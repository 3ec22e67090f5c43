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
"""A background tick for a driver, which ends with the driver.

Cinder's periodic tasks come with the statistics (every 60 s by default);
healing LUNs after a remount must not wait that long. Under cinder-volume
the thread is a green one (Cinder monkey-patches threading), elsewhere a
real one. It holds only a weak reference: a driver that is dropped (tests
make many) stops its tick instead of ticking for ever.
"""

import threading
import time
from typing import Optional
import weakref

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def every(interval: float, owner: object, method_name: str,
          name: str) -> Optional[threading.Thread]:
    """Call ``owner.<method_name>()`` every ``interval`` s; None if off.

    An exception is logged and the tick goes on: a failure to heal now is
    retried at the next one.
    """
    if not interval:
        return None
    ref = weakref.ref(owner)

    def loop() -> None:
        while True:
            time.sleep(interval)
            target = ref()
            if target is None:
                return
            try:
                getattr(target, method_name)()
            except Exception:
                LOG.exception('%s failed; trying again in %s s',
                              name, interval)
            del target

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
