"""Every VM's whole life after it is handed out (DESIGN.md §4, §8): looked
up by name or holder, released by its holder or an admin (or reclaimed when
its lease runs out), deleted or recycled by its agent, its day-2 disks."""
