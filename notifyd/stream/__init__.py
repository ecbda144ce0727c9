"""The streaming core: Faust app, topology, agents and their handlers, tables, scheduler."""
