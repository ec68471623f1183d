-- sn.class: construction through __init, method and metamethod inheritance, is_instance.
local sn = require "seqnn"

describe("seqnn.class", function()
  local Animal = sn.class("spec.Animal")
  function Animal:__init(name) self.name = name end
  function Animal:speak() return self.name .. " makes a sound" end
  function Animal:__tostring() return "Animal(" .. self.name .. ")" end
  function Animal:__len() return #self.name end

  local Dog = sn.class("spec.Dog", Animal)
  function Dog:__init(name, breed)
    Animal.__init(self, name)
    self.breed = breed
  end
  function Dog:speak() return self.name .. " barks" end

  local Puppy = sn.class("spec.Puppy", Dog) -- no __init of its own: Dog's runs

  it("creates instances through __init and looks methods up the chain", function()
    local d = Dog("rex", "collie")
    assert.are.equal("collie", d.breed)
    assert.are.equal("rex barks", d:speak())
    assert.are.equal("rex makes a sound", Animal("rex"):speak())
    local p = Puppy("bit", "pug")
    assert.are.equal("pug", p.breed)
    assert.are.equal("bit barks", p:speak())
    assert.are.equal("spec.Dog", getmetatable(d).__name)
    assert.are.equal("class spec.Dog", tostring(Dog))
  end)

  it("inherits metamethods", function()
    assert.are.equal("Animal(rex)", tostring(Dog("rex")))
    assert.are.equal(3, #Puppy("bit"))
  end)

  it("answers is_instance along the chain", function()
    local is = sn.class.is_instance
    assert.is_true(is(Puppy("a"), Animal))
    assert.is_true(is(Dog("a"), Dog))
    assert.is_false(is(Animal("a"), Dog))
    assert.is_false(is({}, Animal))
    assert.is_false(is(sn.zeros(1), Animal))
    assert.is_false(is(nil, Animal))
  end)

  it("gives classes without __init an empty one", function()
    local Plain = sn.class("spec.Plain")
    assert.is_true(sn.class.is_instance(Plain(), Plain))
  end)

  it("rejects a bad name or parent", function()
    assert.has_error(function() sn.class(1) end)
    local ok, msg = pcall(sn.class, "X", {})
    assert.is_false(ok)
    assert.truthy(msg:find("seqnn.class: the parent of X is not a seqnn.class", 1, true))
  end)
end)
