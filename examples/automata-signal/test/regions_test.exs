defmodule Automata.RegionsTest do
  use ExUnit.Case, async: true

  test "rolls out nrt, fra, syd in order" do
    assert Automata.Regions.rollout() == ["nrt", "fra", "syd"]
    assert Automata.Regions.primary() == "nrt"
    assert Automata.Regions.app_name("fra") == "automata-signal-fra"
  end
end
