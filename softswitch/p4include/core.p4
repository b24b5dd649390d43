/* softswitch's reduced core.p4: the declarations of the P4_16 core library that softswitch implements,
   with the names of p4c's p4include/core.p4. Anything not declared here is outside the supported subset. */

error {
    NoError,
    PacketTooShort,
    NoMatch,
    StackOutOfBounds,
    HeaderTooShort,
    ParserTimeout,
    ParserInvalidArgument
}

extern packet_in {
    void extract<T>(out T hdr);
    bit<32> length();
}

extern packet_out {
    void emit<T>(in T hdr);
}

@noWarn("unused")
action NoAction() {}

match_kind {
    exact,
    ternary,
    lpm
}
