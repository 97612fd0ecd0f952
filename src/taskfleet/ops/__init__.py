"""Control-node tooling (needs the ops extra): images, lab, inventory, Fabric tasks.

Never imported by the runtime, which is standard library only.
"""
