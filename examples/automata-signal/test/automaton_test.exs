defmodule Automata.AutomatonTest do
  use ExUnit.Case, async: true

  alias Automata.{Automaton, Signal}

  setup do
    door =
      Automaton.new(:closed, [
        {:closed, :open, :opened},
        {:opened, :close, :closed},
        {:closed, :lock, :locked},
        {:locked, :unlock, :closed}
      ])

    %{door: door}
  end

  test "collects every state", %{door: door} do
    assert MapSet.equal?(door.states, MapSet.new([:closed, :opened, :locked]))
  end

  test "runs a trace in time order", %{door: door} do
    trace = [Signal.new(:close, 2), Signal.new(:open, 1), Signal.new(:lock, 3)]
    assert Automaton.run(door, trace) == [:closed, :opened, :closed, :locked]
  end

  test "ignores signals with no transition", %{door: door} do
    assert Automaton.step(door, :locked, Signal.new(:open, 1)) == :locked
  end
end
