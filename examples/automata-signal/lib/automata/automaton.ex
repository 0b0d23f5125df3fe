defmodule Automata.Automaton do
  @moduledoc "A finite automaton over signals: states, transitions, and a run over a trace."

  alias Automata.Signal

  defstruct states: MapSet.new(), initial: nil, transitions: %{}

  @type state :: atom()
  @type t :: %__MODULE__{states: MapSet.t(state()), initial: state(), transitions: map()}

  @doc "An automaton from `{from, signal, to}` transitions."
  def new(initial, transitions) do
    states =
      Enum.reduce(transitions, MapSet.new([initial]), fn {from, _signal, to}, acc ->
        acc |> MapSet.put(from) |> MapSet.put(to)
      end)

    table = Map.new(transitions, fn {from, signal, to} -> {{from, signal}, to} end)
    %__MODULE__{states: states, initial: initial, transitions: table}
  end

  @doc "Feeds one signal; unknown signals leave the state unchanged."
  def step(%__MODULE__{transitions: t}, state, %Signal{name: name}) do
    Map.get(t, {state, name}, state)
  end

  @doc "Runs a trace from the initial state; returns the visited states."
  def run(%__MODULE__{initial: initial} = automaton, signals) do
    signals
    |> Signal.sort()
    |> Enum.scan(initial, fn signal, state -> step(automaton, state, signal) end)
    |> then(&[initial | &1])
  end
end
