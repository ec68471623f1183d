-- The default corpus: the text of examples/data/tiny.txt (written for seqnn, free to use
-- for any purpose), embedded as a Lua string because the rock installs only .lua files.
-- spec/data_spec.lua checks that both hold the same text: edit them together. (The newline
-- right after the opening brackets is not part of a Lua long string.)
return [[
THE LAMPLIGHTER'S YEAR
(written for seqnn as its default corpus; free to use for any purpose)

In the first month the lamplighter walked the long road to the harbour,
and every lamp he lit was a small sun held in a glass house.
The fishermen came home by those lamps and said the road was kind to them.
The road said nothing, for roads do not speak, but it kept the lamps.

In the second month the snow came down on the harbour and the hills.
The lamplighter wore two coats and a red scarf his sister had made,
and he lit the lamps early, because the dark came early,
and he put them out late, because the morning was slow to rise.

In the third month the rain came and the road was all mirrors.
Every lamp had a twin that lived in the puddles below it,
and the children counted them: one lamp, two lamps, a hundred lamps,
until their mothers called them in and the counting went to sleep.

In the fourth month the birds returned and sat upon the lamps.
They sang at dusk when the flames were new and bright,
and the lamplighter sang back to them, badly, and they did not mind.
A bird does not ask whether a song is good. It asks whether it is sung.

In the fifth month the ships came in with cloth and salt and oranges.
The sailors were loud and the taverns were louder,
and the lamplighter lit the lamps while the whole town laughed,
and he laughed too, though nobody had told him the joke.

In the sixth month the nights were short and the work was easy.
He lit the lamps at ten and slept before the moon was high.
He dreamed of a road that went on past the harbour and the hills,
with lamps that lit themselves and a lamplighter who had nothing to do.

In the seventh month the heat lay on the town like a heavy cat.
The oil was thin and the wicks were dry and the flames were pale,
so he trimmed each wick and cleaned each glass and filled each lamp,
and the road was bright again, and the cat did not move.

In the eighth month a storm broke three lamps near the water.
He carried new glass from the glassmaker on the hill,
and he mended them one by one while the sea still argued with the shore.
By night the road was whole, and the sea had nothing more to say.

In the ninth month the apples fell and the days began to lean.
The lamplighter's knees were slower than they had been,
but the ladder was the same ladder and the lamps were the same lamps,
and the road did not hurry him, so he did not hurry either.

In the tenth month a girl asked him how to light a lamp.
He showed her the wick, the oil, the glass, the little door,
the way to hold the flame so the wind would not take it.
She lit one lamp and then another, and she did not stop.

In the eleventh month the fog came in from the sea every evening.
The lamps were small suns in a grey world, and the road was a string of them,
and the fishermen said they could find their way home with their eyes shut,
but they kept their eyes open, because the lamps were beautiful.

In the twelfth month the lamplighter and the girl walked the road together.
She lit the lamps on the left and he lit the lamps on the right,
and when they reached the harbour every lamp was burning,
and the year turned over like a page, and the road began again.
]]
