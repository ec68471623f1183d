-- seqnn.train.Progress{total = steps [, start = 0, out = io.stdout, tty = auto]}: training
-- progress. On a terminal one status line is redrawn in place (at most 10 times a second):
--   step  420/1000 [########------------]  loss 1.9321  24.1k tok/s  0:17 < 0:24
-- Elsewhere (a pipe, a file, CI logs) each log() call prints one plain line instead:
--   step 420/1000  loss 1.9321  lr 3.00e-03  24.1k tok/s  elapsed 0:17  ETA 0:24
-- note(text) prints a line that stays (validation results, checkpoints) in both modes.
local sn = require "seqnn"
local now = require("seqnn.core").clock -- monotonic wall-clock seconds
local Progress = sn.class("seqnn.train.Progress")

local BAR = 20

-- True when stdout is a terminal: `test -t 1` runs in a child that inherits our stdout.
local function stdout_is_tty()
  return os.execute("test -t 1") == true
end

function Progress:__init(opts)
  if type(opts) ~= "table" or math.type(opts.total) ~= "integer" then
    error("seqnn.train.Progress: expected {total = steps [, start, out, tty]}", 3)
  end
  self.total, self.start = opts.total, opts.start or 0
  self.out = opts.out or io.stdout
  if opts.tty == nil then self.tty = self.out == io.stdout and stdout_is_tty() else self.tty = opts.tty end
  self.t0, self.tokens, self.step_now, self.drawn = now(), 0, self.start, -math.huge
  self.status = ""
end

local function clock_str(seconds)
  if seconds ~= seconds or seconds == math.huge then return "?" end
  seconds = math.floor(seconds + 0.5)
  local h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, s) end
  return ("%d:%02d"):format(m, s)
end

local function rate_str(tokens_per_s)
  if tokens_per_s >= 1e6 then return ("%.1fM tok/s"):format(tokens_per_s / 1e6) end
  if tokens_per_s >= 1e3 then return ("%.1fk tok/s"):format(tokens_per_s / 1e3) end
  return ("%.0f tok/s"):format(tokens_per_s)
end

-- Seconds since this Progress started, steps done in that time, and the ETA.
function Progress:elapsed() return now() - self.t0 end

function Progress:tokens_per_s()
  local dt = self:elapsed()
  return dt > 0 and self.tokens / dt or 0
end

local function eta(self)
  local done = self.step_now - self.start
  if done <= 0 then return math.huge end
  return self:elapsed() / done * (self.total - self.step_now)
end

local function draw(self)
  local frac = self.total > 0 and self.step_now / self.total or 1
  local filled = math.floor(frac * BAR + 0.5)
  local width = #tostring(self.total)
  self.out:write(("\r\27[Kstep %" .. width .. "d/%d [%s%s] %s %s  %s < %s"):format(self.step_now, self.total,
    ("#"):rep(filled), ("-"):rep(BAR - filled), self.status, rate_str(self:tokens_per_s()),
    clock_str(self:elapsed()), clock_str(eta(self))))
  self.out:flush()
  self.drawn = now()
end

-- update(step, tokens): step finished, having consumed `tokens` tokens.
function Progress:update(step, tokens)
  self.step_now, self.tokens = step, self.tokens + (tokens or 0)
  if self.tty and (now() - self.drawn >= 0.1 or step == self.total) then draw(self) end
end

-- log(step, fields): the loss (and lr) of a logged step; a line when not on a terminal.
function Progress:log(step, fields)
  self.status = ("loss %.4f "):format(fields.loss)
  if self.tty then return draw(self) end
  self.out:write(("step %d/%d  loss %.4f%s  %s  elapsed %s  ETA %s\n"):format(step, self.total, fields.loss,
    fields.lr and ("  lr %.2e"):format(fields.lr) or "", rate_str(self:tokens_per_s()),
    clock_str(self:elapsed()), clock_str(eta(self))))
  self.out:flush()
end

-- note(text): a line that stays; on a terminal it goes above the status line.
function Progress:note(text)
  if self.tty then self.out:write("\r\27[K") end
  self.out:write(text, "\n")
  if self.tty then draw(self) else self.out:flush() end
end

-- finish(): ends the status line on a terminal.
function Progress:finish()
  if self.tty then draw(self); self.out:write("\n"); self.out:flush() end
end

return Progress
