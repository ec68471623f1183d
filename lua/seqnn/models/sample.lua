-- sn.models.sample(model, ids, {length = n [, temperature = 1, top_k, top_p, window]}):
-- sn.generate under its earlier name, with `length` for max_tokens. Returns the new ids.
local sn = require "seqnn"

local function sample(model, ids, opts)
  if type(opts) ~= "table" then
    error(("seqnn.models.sample: expected options {length = n, ...}, got %s"):format(type(opts)), 2)
  end
  return sn.generate(model, ids, { max_tokens = opts.length, temperature = opts.temperature, top_k = opts.top_k,
                                   top_p = opts.top_p, window = opts.window })
end

return sample
