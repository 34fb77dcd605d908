"""Code that runs in the spawners, the processes that fork workers: the preloader
(imports the app once) and a refork's template (a warmed worker), both on base.Spawner.
"""
