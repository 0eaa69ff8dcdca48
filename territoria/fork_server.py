"""Imported first by the workers' fork server (:data:`territoria.workers.PRELOAD`).

The server lives as long as the main job and exits after it; its objects are frozen out of
the garbage collector at exit (:func:`territoria.memory.freeze_at_exit`), so that it does not
spend half a second walking the modules it preloaded while it still holds the job's output
pipe open. Its workers end with ``os._exit`` and do not run this.
"""

from territoria.memory import freeze_at_exit

freeze_at_exit()
