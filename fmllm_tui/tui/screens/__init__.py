"""The TUI's screens: Checks, Memory, Presets, Run, and their dialogs."""
