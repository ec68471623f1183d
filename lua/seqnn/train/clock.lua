-- Wall-clock seconds for timing training. os.clock counts CPU time of every thread, which
-- overstates elapsed time as soon as OpenMP runs; lua-system (a busted dependency) has a
-- monotonic clock, and without it os.time's whole seconds still give a usable ETA.
local ok, system = pcall(require, "system")
if ok and type(system.monotime) == "function" then return system.monotime end
return os.time
