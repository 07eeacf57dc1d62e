-- A slot's value in its bucket (observer/adapters/redis/keys.py, `pack_value`): its next due
-- time (8 bytes, big-endian two's complement epoch ms; NONE = -2^63: not due), then its state.
-- The store puts this before write.lua and due.lua, which both read due times.
local NONE = '\128\0\0\0\0\0\0\0'

-- A value's due time, nil: not due. Exact for |ms| < 2^53, like a sorted set's score.
local function due_of(v)
  if not v or #v < 8 then return nil end
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(v, 1, 8)
  if b1 < 128 then
    return ((((((b1 * 256 + b2) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 256 + b7) * 256 + b8
  end
  if b1 == 128 and b2 + b3 + b4 + b5 + b6 + b7 + b8 == 0 then return nil end
  b1, b2, b3, b4, b5, b6, b7, b8 = 255 - b1, 255 - b2, 255 - b3, 255 - b4, 255 - b5, 255 - b6, 255 - b7, 255 - b8
  return -(((((((b1 * 256 + b2) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 256 + b7) * 256 + b8) - 1
end

