defmodule Automata.Signal do
  @moduledoc "A signal an automaton reacts to."

  @enforce_keys [:name, :at]
  defstruct [:name, :at, payload: %{}]

  @type t :: %__MODULE__{name: atom(), at: integer(), payload: map()}

  @doc "Builds a signal; names must be atoms."
  def new(name, at, payload \\ %{}) when is_atom(name) and is_integer(at) do
    %__MODULE__{name: name, at: at, payload: payload}
  end

  @doc "Orders signals by time, then by name, so replays are deterministic."
  def sort(signals), do: Enum.sort_by(signals, &{&1.at, &1.name})
end
