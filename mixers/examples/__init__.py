"""Example plug-ins (not imported by ``import mixers``): import a module here to register its mixer."""
